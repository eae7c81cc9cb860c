"""The Gradio UI: worklist, case view (the viewer is page JavaScript talking to the lean routes), reader study, admin.

Every handler finds the caller's session from the ``biascare_session`` cookie of the request (the same cookie the lean
routes use) and goes through :class:`app.service.AppService`; admin handlers refuse non-admins server-side.
Named API endpoints (for gradio_client and the bench): ``/open_case``, ``/open_next_assignment``, ``/click``,
``/worklist``, ``/submit``, ``/set_labels``.
"""
from __future__ import annotations

import base64
import html
import inspect
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app import admin
from app.service import CLASSES, SESSION_COOKIE, AppError, AppService, Session, View, view_slices

STATIC = Path(__file__).resolve().parent / "static"
WORKLIST_COLUMNS = ["case", "uncertainty", "status", "top AI finding"]
# sign-out is a POST (GET /logout is refused), submitted in the same tab; the server answers 303 → /login
SIGN_OUT_FORM = ('<form method="post" action="/logout" target="_self" style="display:inline">'
                 '<button id="bc-signout" type="submit">Sign out</button></form>')
EMPTY_VIEWER = '<div class="bc-empty">No case open. Pick one from the worklist or start your reader study.</div>'


def head_html() -> str:
    js = (STATIC / "viewer.js").read_text()
    return f"<script>{js}</script>"


def css() -> str:
    return (STATIC / "viewer.css").read_text()


def _session(service: AppService, request: gr.Request | None) -> Session:
    token = None
    if request is not None:
        cookies = getattr(request, "cookies", None) or {}
        token = cookies.get(SESSION_COOKIE)
        if token is None:
            header = (getattr(request, "headers", None) or {}).get("cookie", "")
            for part in header.split(";"):
                key, _, value = part.strip().partition("=")
                if key == SESSION_COOKIE:
                    token = value
    try:
        return service.session(token)
    except AppError as error:
        raise gr.Error(str(error)) from None


def _fail(error: Exception) -> gr.Error:
    return gr.Error(str(error))


def viewer_html(view: View | None, idle_seconds: float) -> str:
    if view is None:
        return EMPTY_VIEWER
    g = view.image.geometry
    slices = view.image.slice_count or 0
    return (f'<div class="bc-slot" data-nonce="{html.escape(view.nonce)}" data-w="{g.disp_width}" '
            f'data-h="{g.disp_height}" data-ai="{1 if view.shows_ai else 0}" data-idle="{idle_seconds:g}" '
            f'data-slices="{slices}" data-slice="{view.image.slice_index or 0}"></div>')


def case_info(view: View | None) -> str:
    if view is None:
        return ""
    g = view.image.geometry
    where = (f"study **{view.target.study}**, arm **{view.target.arm}**, read {view.target.order}"
             if view.in_study else "free annotation")
    return f"Case **{view.case}** · {g.width}×{g.height} px · {where}"


def ai_markdown(service: AppService, view: View | None) -> str:
    panel = service.ai_panel(view) if view is not None else None
    if panel is None:
        return ""
    lines = [f"**AI** (`{panel['model_version']}`)"]
    probabilities = panel["probabilities"]
    if not probabilities:
        lines.append(panel["why_none"])
    else:
        top = sorted(probabilities.items(), key=lambda kv: -kv[1])[:8]
        lines += ["| finding | p |", "|---|---|"] + [f"| {name} | {p:.2f} |" for name, p in top]
        if panel["suggested"]:
            lines.append("Suggested: " + ", ".join(panel["suggested"]))
    return "\n".join(lines)


def build_ui(service: AppService, checkpoint: str | None = None) -> gr.Blocks:
    idle = service.idle_seconds

    def opened(view: View | None, message: str = "") -> tuple:
        panel = ai_markdown(service, view)
        return (viewer_html(view, idle), case_info(view), gr.update(value=panel, visible=bool(panel)),
                gr.update(value=[]), message, gr.Tabs(selected="case"))

    # ---------------------------------------------------------------- handlers
    def on_load(request: gr.Request):
        session = _session(service, request)
        is_admin = session.reader.is_admin
        model = f"model `{service.model_version}` · " if is_admin else ""
        who = (f"Signed in as **{html.escape(session.reader.name)}** ({session.reader.role}) · {model}"
               f"{SIGN_OUT_FORM}")
        return who, gr.update(visible=is_admin)

    def worklist(status: str, class_name: str, u_min: float, u_max: float, request: gr.Request):
        session = _session(service, request)
        rows = service.worklist(session, status=status or "open",
                                class_name=None if class_name in (None, "", "All") else class_name,
                                min_uncertainty=u_min if u_min and u_min > 0 else None,
                                max_uncertainty=u_max if u_max is not None and u_max < 1 else None)
        frame = pd.DataFrame([{"case": r["case"], "uncertainty": None if r["uncertainty"] is None else round(r["uncertainty"], 3),
                               "status": "done" if r["annotated"] else "open", "top AI finding": r["top_finding"]}
                              for r in rows], columns=WORKLIST_COLUMNS)
        done, total = service.progress(session)
        return frame, f"{done} of {total} case(s) annotated · {len(rows)} shown"

    def open_case(case: str, request: gr.Request):
        session = _session(service, request)
        try:
            view = service.open_case(session, case)
        except AppError as error:
            raise _fail(error) from None
        return opened(view)

    def open_selected(frame: pd.DataFrame, evt: gr.SelectData, request: gr.Request):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        case = frame.iloc[int(row)]["case"]
        return open_case(str(case), request)

    def open_top(status: str, class_name: str, u_min: float, u_max: float, request: gr.Request):
        frame, _ = worklist(status, class_name, u_min, u_max, request)
        if frame.empty:
            raise gr.Error("the worklist is empty for these filters")
        return open_case(str(frame.iloc[0]["case"]), request)

    def open_next(status: str, class_name: str, u_min: float, u_max: float, request: gr.Request):
        """Skip: the first worklist case other than the one open now (its view is closed, nothing is submitted)."""
        session = _session(service, request)
        current = session.view.case if session.view is not None else None
        frame, _ = worklist(status, class_name, u_min, u_max, request)
        others = [str(c) for c in frame["case"] if str(c) != current]
        if not others:
            raise gr.Error("no other case in the worklist for these filters")
        return open_case(others[0], request)

    def open_next_assignment(request: gr.Request):
        session = _session(service, request)
        try:
            view = service.open_assignment(session)
        except AppError as error:
            raise _fail(error) from None
        if view is None:
            return opened(None, "All your assigned reads are done. Thank you!")
        return opened(view)

    def set_labels(positives: list[str], request: gr.Request):
        session = _session(service, request)
        try:
            service.set_labels(session, positives or [])
        except AppError as error:
            raise _fail(error) from None

    def submit(positives: list[str], request: gr.Request):
        session = _session(service, request)
        view = session.view
        if view is None:
            raise gr.Error("no case is open")
        try:
            service.submit(session, positives or [])
        except AppError as error:
            raise _fail(error) from None
        message = f"Submitted case {view.case}."
        try:
            if view.in_study:
                nxt = service.open_assignment(session)
                if nxt is None:
                    return opened(None, message + " All your assigned reads are done.")
                return opened(nxt, message)
            items = service.worklist(session, status="open")
            if not items:
                return opened(None, message + " The worklist is empty.")
            return opened(service.open_case(session, items[0]["case"]), message)
        except AppError as error:
            return opened(None, f"{message} {error}")

    def open_read(study: str, order: float, request: gr.Request):
        """Open one of my reads by study and read number (revisits only where the study allows them)."""
        session = _session(service, request)
        mine = [a for a in service.assignments(session) if a.order == int(order or 0) and (not study or a.study == study)]
        if not mine:
            raise gr.Error("no such read among your assignments")
        try:
            view = service.open_assignment(session, mine[0].id)
        except AppError as error:
            raise _fail(error) from None
        return opened(view)

    def my_assignments(request: gr.Request):
        session = _session(service, request)
        rows = [{"study": a.study, "read": a.order, "session": a.session, "arm": a.arm, "status": a.status}
                for a in service.assignments(session)]
        return pd.DataFrame(rows, columns=["study", "read", "session", "arm", "status"])

    def click_api(x: float, y: float, positive: bool, request: gr.Request) -> dict[str, Any]:
        """The click path through Gradio's event machinery (for comparison with the lean route)."""
        session = _session(service, request)
        try:
            result = service.click(session, None, x, y, bool(positive))
        except AppError as error:
            raise _fail(error) from None
        return {"png_base64": base64.b64encode(result.png).decode("ascii"), "server_ms": result.total_ms,
                "model_ms": result.model_ms, "encode_ms": result.encode_ms, "clicks": result.clicks}

    def view_state(request: gr.Request) -> dict[str, Any]:
        session = _session(service, request)
        view = session.view
        if view is None:
            return {}
        return view_payload(view)

    # ------------------------------------------------------------ admin handlers
    def guarded(fn):  # type: ignore[no-untyped-def]
        """fn(session, *inputs) → a Gradio handler (*inputs, request) that finds the session and maps errors."""
        def wrapper(*args, **kwargs):
            request = kwargs.pop("request", None)
            if request is None and args and isinstance(args[-1], gr.Request):
                args, request = args[:-1], args[-1]
            session = _session(service, request)
            try:
                return fn(session, *args, **kwargs)
            except AppError as error:
                raise _fail(error) from None
        params = list(inspect.signature(fn).parameters.values())[1:]
        params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**{p.name: p.annotation for p in params[:-1]}, "request": gr.Request}
        wrapper.__name__ = fn.__name__
        return wrapper

    def adm_import(session: Session, files, dataset: str):
        return admin.import_uploads(service, session, files, dataset)

    def adm_users(session: Session):
        return admin.users_frame(service, session)

    def adm_create_user(session: Session, name: str, password: str, role: str):
        message = admin.create_user(service, session, name, password, role)
        return message, admin.users_frame(service, session)

    def adm_choices(session: Session):
        service.require_admin(session)
        cases = [c.pseudo_id for c in service.store.cases()]
        readers = [r.name for r in service.store.readers() if r.role == "reader"]
        studies = admin.studies(service)
        return (gr.update(choices=cases, value=cases), gr.update(choices=readers, value=readers),
                gr.update(choices=["(latest)"] + studies, value="(latest)"))

    def adm_create_study(session: Session, name, cases, readers, arms, design, seed, washout, revisit):
        return admin.create_study(service, session, name, cases or [], readers or [], arms or [], design,
                                  int(seed or 0), int(washout or 0), bool(revisit))

    def adm_model(session: Session):
        return admin.model_info(service, session, checkpoint)

    def adm_retriage(session: Session):
        service.require_admin(session)
        if service.background:
            service.background.triage_missing()
        return "Triage of cases without a prediction was queued."

    def adm_export(session: Session, study: str):
        return _downloadable(admin.export_results(service, session, None if study in (None, "", "(latest)") else study))

    def adm_export_training(session: Session):
        return _downloadable(admin.export_training(service, session))

    def adm_dashboard(session: Session, study: str):
        service.require_admin(session)
        frame = admin.dashboard_frame(service, None if study in (None, "", "(latest)") else study)
        plot = frame.dropna(subset=["mean_time_s"]) if not frame.empty else frame
        return frame, plot, plot

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="BiasCare reader") as demo:
        with gr.Row():
            who = gr.Markdown(elem_id="bc-who")
        with gr.Tabs(selected="worklist") as tabs:
            with gr.Tab("Worklist", id="worklist"):
                with gr.Row():
                    status = gr.Radio(["open", "done", "all"], value="open", label="Status")
                    class_name = gr.Dropdown(["All", *CLASSES], value="All", label="AI finding (p ≥ 0.5)")
                    u_min = gr.Slider(0, 1, value=0, step=0.01, label="Uncertainty from")
                    u_max = gr.Slider(0, 1, value=1, step=0.01, label="Uncertainty up to")
                with gr.Row():
                    refresh = gr.Button("Refresh", elem_id="bc-refresh")
                    top = gr.Button("Open top case", variant="primary", elem_id="bc-open-top")
                progress = gr.Markdown(elem_id="bc-progress")
                table = gr.Dataframe(headers=WORKLIST_COLUMNS, interactive=False, elem_id="bc-worklist",
                                     label="Cases, highest model uncertainty first (click a row to open it)")
            with gr.Tab("Case", id="case"):
                info = gr.Markdown(elem_id="bc-case-info")
                with gr.Row():
                    with gr.Column(scale=3):
                        viewer = gr.HTML(EMPTY_VIEWER, elem_id="bc-viewer-html")
                        gr.Markdown("Keys: **P**/**N** positive/negative · **T** toggle · right-click = other mode · "
                                    "**U** or Ctrl+Z undo · **R** reset · **A** accept as is · **O** overlay · "
                                    "**+**/**−**/**0** zoom · **↑**/**↓** (PageUp/PageDown: 10) slice of a "
                                    "volume · Ctrl+Enter submit & next · **J** next case",
                                    elem_id="bc-keys")
                    with gr.Column(scale=1, min_width=260):
                        ai_panel = gr.Markdown(visible=False, elem_id="bc-ai-panel")
                        labels = gr.CheckboxGroup(list(CLASSES), label="Findings (CXR-LT 26)", elem_id="bc-labels")
                        submit_btn = gr.Button("Submit & next", variant="primary", elem_id="bc-submit")
                        next_btn = gr.Button("Skip to next case", elem_id="bc-next")
                        message = gr.Markdown(elem_id="bc-message")
            with gr.Tab("Reader study", id="study"):
                start = gr.Button("Start / continue my reads", variant="primary", elem_id="bc-study-next")
                assignments = gr.Dataframe(interactive=False, label="My assignments", elem_id="bc-assignments")
                with gr.Row():
                    read_study = gr.Textbox(label="Study (blank: any)")
                    read_order = gr.Number(1, precision=0, label="Read number")
                    read_btn = gr.Button("Open this read (if revisiting is allowed)")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                with gr.Tab("Dashboard"):
                    study_pick = gr.Dropdown(["(latest)"], value="(latest)", label="Study", allow_custom_value=True)
                    dash = gr.Dataframe(interactive=False, label="Accuracy and time per reader and arm")
                    with gr.Row():
                        time_plot = gr.BarPlot(x="reader", y="mean_time_s", color="arm", title="Mean time per case (s)")
                        acc_plot = gr.BarPlot(x="reader", y="accuracy", color="arm", title="Accuracy")
                    live = gr.Checkbox(False, label="Live (refresh every 5 s)")
                    dash_btn = gr.Button("Refresh dashboard")
                    timer = gr.Timer(5, active=False)
                with gr.Tab("Studies"):
                    st_name = gr.Textbox(label="Study name")
                    st_cases = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Cases")
                    st_readers = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Readers")
                    st_arms = gr.CheckboxGroup(["unaided", "ai_aided"], value=["unaided", "ai_aided"], label="Arms")
                    with gr.Row():
                        st_design = gr.Radio(["crossover", "sequential"], value="crossover", label="Design")
                        st_seed = gr.Number(0, precision=0, label="Seed (per-reader order)")
                        st_washout = gr.Number(28, precision=0, label="Washout (days)")
                        st_revisit = gr.Checkbox(False, label="Allow revisiting")
                    st_btn = gr.Button("Create study", variant="primary")
                    st_msg = gr.Markdown()
                with gr.Tab("Import"):
                    im_files = gr.File(file_count="multiple", label="PNG, JPEG or DICOM images",
                                       file_types=[".png", ".jpg", ".jpeg", ".dcm"])
                    im_dataset = gr.Textbox("uploads", label="Dataset name")
                    im_btn = gr.Button("Import", variant="primary")
                    im_msg = gr.Markdown(elem_id="bc-import-message")
                with gr.Tab("Users"):
                    users = gr.Dataframe(interactive=False)
                    with gr.Row():
                        u_name = gr.Textbox(label="Name")
                        u_pass = gr.Textbox(label="Password (≥ 8 characters)", type="password")
                        u_role = gr.Radio(["reader", "admin"], value="reader", label="Role")
                    u_btn = gr.Button("Create user")
                    u_msg = gr.Markdown()
                with gr.Tab("Model"):
                    model_md = gr.Markdown()
                    retriage = gr.Button("Triage new cases")
                    retriage_msg = gr.Markdown()
                with gr.Tab("Exports"):
                    ex_btn = gr.Button("Results (CSV, long format) of the chosen study")
                    ex_train = gr.Button("Training manifest + masks (zip)")
                    ex_file = gr.File(label="Download")

        filters = [status, class_name, u_min, u_max]
        case_outputs = [viewer, info, ai_panel, labels, message, tabs]

        demo.load(on_load, None, [who, admin_tab], api_name=False)
        demo.load(worklist, filters, [table, progress], api_name="worklist")
        for trigger in (refresh.click, status.change, class_name.change, u_min.release, u_max.release):
            trigger(worklist, filters, [table, progress], api_name=False)
        table.select(open_selected, [table], case_outputs, api_name=False)
        top.click(open_top, filters, case_outputs, api_name=False)
        next_btn.click(open_next, filters, case_outputs, api_name=False)
        labels.input(set_labels, [labels], None, api_name="set_labels", trigger_mode="always_last")
        submit_btn.click(submit, [labels], case_outputs, api_name="submit").then(
            worklist, filters, [table, progress], api_name=False)
        start.click(open_next_assignment, None, case_outputs, api_name="open_next_assignment").then(
            my_assignments, None, [assignments], api_name=False)
        tabs.select(my_assignments, None, [assignments], api_name=False)
        read_btn.click(open_read, [read_study, read_order], case_outputs, api_name="open_read")
        def open_case_api(case: str, request: gr.Request) -> dict[str, Any]:
            return _api_open(service, case, request)

        gr.api(open_case_api, api_name="open_case")
        gr.api(click_api, api_name="click")
        gr.api(view_state, api_name="view_state")

        # admin
        admin_tab.select(guarded(adm_users), None, [users], api_name=False).then(
            guarded(adm_choices), None, [st_cases, st_readers, study_pick], api_name=False).then(
            guarded(adm_model), None, [model_md], api_name=False)
        im_btn.click(guarded(adm_import), [im_files, im_dataset], [im_msg], api_name="admin_import")
        u_btn.click(guarded(adm_create_user), [u_name, u_pass, u_role], [u_msg, users], api_name="admin_create_user")
        st_btn.click(guarded(adm_create_study), [st_name, st_cases, st_readers, st_arms, st_design, st_seed,
                                                 st_washout, st_revisit], [st_msg], api_name="admin_create_study")
        retriage.click(guarded(adm_retriage), None, [retriage_msg], api_name=False)
        ex_btn.click(guarded(adm_export), [study_pick], [ex_file], api_name="admin_export")
        ex_train.click(guarded(adm_export_training), None, [ex_file], api_name=False)
        dash_outputs = [dash, time_plot, acc_plot]
        dash_btn.click(guarded(adm_dashboard), [study_pick], dash_outputs, api_name="admin_dashboard")
        timer.tick(guarded(adm_dashboard), [study_pick], dash_outputs, api_name=False)
        live.change(lambda on: gr.Timer(active=bool(on)), [live], [timer], api_name=False)
    return demo


def _api_open(service: AppService, case: str, request: gr.Request) -> dict[str, Any]:
    """Open a case by its pseudonymous id (API only: the bench and scripted clients)."""
    session = _session(service, request)
    try:
        view = service.open_case(session, case)
    except AppError as error:
        raise _fail(error) from None
    return view_payload(view)


def view_payload(view: View) -> dict[str, Any]:
    """The open case for API clients: nonce, sizes (original and display) and, for volumes, the slice shown."""
    g = view.image.geometry
    return {"nonce": view.nonce, "case": view.case, "shows_ai": view.shows_ai, "width": g.width, "height": g.height,
            "display_width": g.disp_width, "display_height": g.disp_height, **view_slices(view)}


def _downloadable(path: Path) -> str:
    """A copy of an export in a fresh temporary folder (Gradio serves downloads only from there, never from DATA)."""
    folder = Path(tempfile.mkdtemp(prefix="biascare-export-"))
    target = folder / path.name
    shutil.copyfile(path, target)
    return str(target)
