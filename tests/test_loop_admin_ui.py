"""Admin → Training through the Gradio API of a live server (the handlers the tab's buttons and live poll call):
start a job, see it queued with its progress line, cancel it; the registry lists the checkpoint the app started
with (adopted at start), its comparison and a promotion; a reader is refused."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.testing import LiveServer
    live = LiveServer.start(tmp_path_factory.mktemp("loop-ui") / "data", wait_triage=False)
    yield live
    live.stop()


def test_loop_admin_starts_watches_and_cancels_a_job_and_sees_the_registry(server):
    from gradio_client.exceptions import AppError

    admin = server.gradio_client(server.login("boss"))
    message, jobs, job_id = admin.predict("quick", "seg", "in-use", 3, [], [], True, False, 10,
                                          api_name="/admin_start_job")
    assert message == f"job {job_id} queued" and jobs["data"][0][1] == "queued"
    _, headline, _, _ = admin.predict(job_id, api_name="/admin_job_progress")
    assert f"job {int(job_id)}" in headline and "queued" in headline and "0%" in headline
    assert admin.predict(job_id, api_name="/admin_cancel_job") == f"job {int(job_id)}: cancelled"
    in_use = server.service.model_version
    assert admin.predict(1, api_name="/admin_compare") == f"{in_use}: not evaluated"
    done, checkpoints = admin.predict(1, api_name="/admin_promote")
    assert done.startswith(f"{in_use} is in use") and checkpoints["data"][0][1:3] == [in_use, "promoted"]

    from annotations_db.site import fix_heldout_split
    from app.loop import heldout_summary
    boss = server.service.login("boss", server.credentials["boss"])
    assert "not fixed yet" in heldout_summary(server.service, boss)
    fix_heldout_split(server.service.store, 0.5)
    assert heldout_summary(server.service, boss).startswith("Held-out split: 50% of the cases (fixed)")

    import shutil

    from annotations_db.registry import Registry
    from app.loop import sync_in_use
    changed = server.service.data_dir / "changed.safetensors"
    shutil.copyfile(server.service.data_dir / "models" / f"{in_use}.safetensors", changed)
    registry = Registry(server.service.store)
    registry.promote(registry.register(changed, "changed-later").id, None, "test")
    with open(changed, "ab") as handle:  # the file changes after it was registered: never loaded
        handle.write(b"x")
    assert sync_in_use(server.service) is False and server.service.model_version == in_use

    reader = server.gradio_client(server.login("ada"))
    with pytest.raises(AppError, match="administrators"):
        reader.predict("quick", "seg", "in-use", 3, [], [], True, False, 10, api_name="/admin_start_job")
