"""This site's settings in its own database (``site_settings``): the held-out split of the promotion gate.

    split = heldout_split(store)          # HeldoutSplit(salt, share, fixed); share 0 until it is fixed
    split = fix_heldout_split(store)      # fixed at DEFAULT_HELDOUT_SHARE (done by the first training job)
    split.contains(pseudo_id)             # the rule of annotations_db.manifest.in_heldout

The split is fixed once (by an admin, or by the first training job at the default share) and never changes after:
the cases it holds out are never in a training export, and the gate compares models on them. Until it is fixed
nothing is held out (a site that never trains keeps every export whole).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from annotations_db.manifest import DEFAULT_HELDOUT_SHARE, in_heldout
from annotations_db.models import SiteSetting
from annotations_db.store import Store

HELDOUT_KEY = "heldout_split"


@dataclass(frozen=True)
class HeldoutSplit:
    """The site's held-out split: ``share`` of the cases by ``sha256(salt:case)``; ``fixed`` once decided."""
    salt: str
    share: float
    fixed: bool

    def contains(self, pseudo_id: str) -> bool:
        return self.fixed and in_heldout(pseudo_id, self.salt, self.share)


def heldout_split(store: Store) -> HeldoutSplit:
    """The site's held-out split (share 0, not fixed, while nobody fixed it)."""
    with store.read_session() as session:
        row = session.get(SiteSetting, HELDOUT_KEY)
        if row is None:
            return HeldoutSplit("", 0.0, False)
        return HeldoutSplit(str(row.value["salt"]), float(row.value["share"]), True)


def fix_heldout_split(store: Store, share: float | None = None, salt: str | None = None) -> HeldoutSplit:
    """Fix the split at ``share`` (default :data:`DEFAULT_HELDOUT_SHARE`) with ``salt`` (default random; given when a
    site carries its split over from another database); when it is fixed already, return it — ValueError if
    ``share`` asks for another one (moving the split would put trained-on cases in it)."""
    if share is not None and not 0.0 < float(share) < 1.0:
        raise ValueError(f"the held-out share must be between 0 and 1 (exclusive), not {share}")
    with store.write_session() as session:
        row = session.get(SiteSetting, HELDOUT_KEY)
        if row is None:
            value = {"salt": salt or secrets.token_hex(16), "share": float(share or DEFAULT_HELDOUT_SHARE)}
            session.add(SiteSetting(key=HELDOUT_KEY, value=value, updated_at=store.now()))
            return HeldoutSplit(value["salt"], value["share"], True)
        fixed = HeldoutSplit(str(row.value["salt"]), float(row.value["share"]), True)
    if share is not None and abs(float(share) - fixed.share) > 1e-12:
        raise ValueError(f"this site's held-out split is fixed at {fixed.share:g}; it cannot move to {share:g} "
                         "(cases trained on would enter it)")
    return fixed
