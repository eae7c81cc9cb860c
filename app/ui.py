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
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app import admin, loop_ui
from app.panels import answer_panel, case_header
from app.security import sign_out_token
from app.service import CLASSES, SESSION_COOKIE, AppError, AppService, Session, View, objects_payload, view_payload

STATIC = Path(__file__).resolve().parent / "static"
WORKLIST_COLUMNS = ["case", "uncertainty", "status", "top AI finding"]


def sign_out_form(session: Session) -> str:
    """Sign-out is a POST with the login's form token (GET /logout is refused), submitted in the same tab; the server
    answers 303 → /login."""
    return ('<form method="post" action="/logout" target="_self" style="display:inline">'
            f'<input type="hidden" name="csrf" value="{sign_out_token(session.token)}">'
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
    """The viewer's slot: app/static/viewer.js builds the viewer inside it (display grid data-w × data-h, original
    grid data-ow × data-oh, for 1:1 zoom; volumes: data-slices, the slice shown and data-marked, the slices whose
    mask the answer keeps so far — restored after a reload)."""
    if view is None:
        return EMPTY_VIEWER
    g = view.image.geometry
    slices = view.image.slice_count or 0
    marked = ",".join(str(k) for k in view.state.acted_slices() if k is not None) if slices else ""
    objects = objects_payload(view)
    labels = [{"label": item["label"], "colour": item["colour"]} for item in objects["object_labels"]]
    return (f'<div class="bc-slot" data-nonce="{html.escape(view.nonce)}" data-w="{g.disp_width}" '
            f'data-h="{g.disp_height}" data-ow="{g.width}" data-oh="{g.height}" '
            f'data-ai="{1 if view.shows_ai else 0}" data-idle="{idle_seconds:g}" '
            f'data-slices="{slices}" data-slice="{view.image.slice_index or 0}" data-marked="{marked}" '
            f'data-object-labels="{html.escape(json.dumps(labels))}" '
            f'data-objects="{html.escape(json.dumps(objects["objects"]))}"></div>')


def build_ui(service: AppService, checkpoint: str | None = None) -> gr.Blocks:
    idle = service.idle_seconds

    def opened(view: View | None, message: str = "", select: bool = True) -> tuple:
        return (viewer_html(view, idle), case_header(view), answer_panel(service, view), message,
                gr.Tabs(selected="case") if select else gr.update())

    # ---------------------------------------------------------------- handlers
    def on_load(request: gr.Request):
        session = _session(service, request)
        is_admin = session.reader.is_admin
        model = f"model `{service.model_version}` · " if is_admin else ""
        who = (f"Signed in as **{html.escape(session.reader.name)}** ({session.reader.role}) · {model}"
               f"{sign_out_form(session)}")
        try:
            view = service.resume(session)  # a reload, a new login or a restart: back to the open case
        except AppError as error:
            return who, gr.update(visible=is_admin), *opened(None, str(error), select=False)
        return who, gr.update(visible=is_admin), *opened(view, select=view is not None)

    def sync(request: gr.Request):
        """Render the session's open case (after the page submitted, skipped or paused through the lean routes)."""
        session = _session(service, request)
        view = session.view
        return opened(view, "" if view is not None else reads_left_message(service, session), select=view is not None)

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

    def open_next_assignment(request: gr.Request):
        session = _session(service, request)
        try:
            view = service.open_assignment(session)
        except AppError as error:
            raise _fail(error) from None
        if view is None:
            return opened(None, reads_left_message(service, session))
        return opened(view)

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
        return assignments_frame(service, session), reads_left_message(service, session)

    def click_api(nonce: str, x: float, y: float, positive: bool, request: gr.Request) -> dict[str, Any]:
        """The click path through Gradio's event machinery (for comparison with the lean route)."""
        session = _session(service, request)
        try:
            result = service.click(session, nonce, x, y, bool(positive))
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
        pick = gr.update(choices=["(latest)"] + studies, value="(latest)")
        return gr.update(choices=cases, value=cases), gr.update(choices=readers, value=readers), pick, pick

    def adm_create_study(session: Session, name, cases, readers, arms, design, seed, washout, revisit, ratings,
                         exclude_seen):
        return admin.create_study(service, session, name, cases or [], readers or [], arms or [], design,
                                  int(seed or 0), int(washout or 0), bool(revisit), int(ratings or 0),
                                  bool(exclude_seen))

    def adm_ai_sources(session: Session):
        frame = admin.ai_sources_frame(service, session)
        studies = admin.studies(service)
        return (frame, gr.update(choices=["(none)"] + studies), gr.update(choices=studies),
                gr.update(choices=list(frame["source"])))

    def adm_ai_import(session: Session, csv_file, thresholds_file, mask_files, name: str, study: str):
        message = admin.import_ai_predictions(service, session, csv_file, thresholds_file, mask_files, name,
                                              None if study in (None, "", "(none)") else study)
        return message, admin.ai_sources_frame(service, session)

    def adm_xrv(session: Session, path: str, name: str, study: str):
        message = admin.load_xrv_source(service, session, path, name, None if study in (None, "", "(none)") else study)
        return message, admin.ai_sources_frame(service, session)

    def adm_attach(session: Session, study: str, source: str):
        return admin.attach_ai_source(service, session, study, source)

    def adm_model(session: Session):
        return admin.model_info(service, session, checkpoint)

    def adm_retriage(session: Session):
        service.require_admin(session)
        if service.background:
            service.background.triage_missing()
        return "Triage of cases without a prediction was queued."

    def adm_export(session: Session, study: str, kind: str):
        return _downloadable(admin.export(service, session, kind, _chosen_study(study)))

    def adm_dashboard(session: Session, study: str):
        service.require_admin(session)
        frame = admin.dashboard_frame(service, _chosen_study(study))
        times = frame.dropna(subset=["mean_time_s"]) if not frame.empty else frame
        accuracy = frame.dropna(subset=["accuracy"]) if not frame.empty else frame
        return frame, times, accuracy

    # ---------------------------------------------------------------- layout
    # Gradio's cache holds uploads and the download copies of exports: emptied of files older than an hour
    with gr.Blocks(title="BiasCare reader", delete_cache=(600, admin.EXPORT_RETENTION_S)) as demo:
        with gr.Row():
            who = gr.Markdown(elem_id="bc-who")
        with gr.Tabs(selected="worklist") as tabs:
            with gr.Tab("Worklist", id="worklist"):
                with gr.Row():
                    status = gr.Radio(["open", "done", "all"], value="open", label="Status")
                    class_name = gr.Dropdown(["All", *CLASSES], value="All", label="AI finding (suggested)")
                    u_min = gr.Slider(0, 1, value=0, step=0.01, label="Uncertainty from")
                    u_max = gr.Slider(0, 1, value=1, step=0.01, label="Uncertainty up to")
                with gr.Row():
                    refresh = gr.Button("Refresh", elem_id="bc-refresh")
                    top = gr.Button("Open top case", variant="primary", elem_id="bc-open-top")
                progress = gr.Markdown(elem_id="bc-progress")
                table = gr.Dataframe(headers=WORKLIST_COLUMNS, interactive=False, elem_id="bc-worklist",
                                     label="Cases, highest model uncertainty first (click a row to open it)")
            with gr.Tab("Case", id="case"):
                info = gr.HTML(case_header(None), elem_id="bc-case-info")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        viewer = gr.HTML(EMPTY_VIEWER, elem_id="bc-viewer-html")
                    with gr.Column(scale=1, min_width=300):
                        answer = gr.HTML(answer_panel(service, None), elem_id="bc-answer-html")
                message = gr.Markdown(elem_id="bc-message")
                gr.Markdown("Keys (**?** in the viewer lists them all): **P**/**N**/**T** clicks · **B** box · "
                            "**D**/**E** brush/eraser · **M** measure · **H**/Space pan · right-drag window/level · "
                            "**1–9** presets · **I** invert · **Esc** reset view · **U**/Ctrl+Z undo · **R** reset · "
                            "**A** accept · **C** clean-up · **K** carry · **O**/**F** overlay · wheel, **↑**/**↓** "
                            "slices · Ctrl+Enter submit & next · **J** skip", elem_id="bc-keys")
                sync_btn = gr.Button("sync", elem_id="bc-sync", elem_classes=["bc-hidden"])
            with gr.Tab("Reader study", id="study"):
                start = gr.Button("Start / continue my reads", variant="primary", elem_id="bc-study-next")
                reads_left = gr.Markdown(elem_id="bc-reads-left")
                assignments = gr.Dataframe(interactive=False, label="My assignments", elem_id="bc-assignments")
                with gr.Row():
                    read_study = gr.Textbox(label="Study (blank: any)")
                    read_order = gr.Number(1, precision=0, label="Read number")
                    read_btn = gr.Button("Open this read (if revisiting is allowed)")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                with gr.Tab("Dashboard"):
                    study_pick = gr.Dropdown(["(latest)"], value="(latest)", label="Study", allow_custom_value=True)
                    dash = gr.Dataframe(interactive=False, label="Accuracy and time per reader and arm")
                    with gr.Row():  # x = "reader · arm": one bar per reader and arm, side by side, never stacked
                        time_plot = gr.BarPlot(x="rater", y="mean_time_s", color="arm", title="Mean time per read (s)",
                                               x_title="reader · arm", y_title="seconds", sort="x")
                        acc_plot = gr.BarPlot(x="rater", y="accuracy", color="arm", title="Accuracy (recall)",
                                              x_title="reader · arm", y_title="accuracy", y_lim=[0, 1], sort="x")
                    gr.Markdown(admin.ACCURACY_DEFINITION, elem_id="bc-accuracy-definition")
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
                    with gr.Row():
                        st_ratings = gr.Number(100, precision=0, minimum=0, maximum=1000,
                                               label="Confidence rating scale 1–N per positive finding (0 = binary)")
                        st_exclude = gr.Checkbox(False, label="Leave out cases a reader has seen with the AI outside "
                                                              "the study")
                    st_btn = gr.Button("Create study", variant="primary")
                    st_msg = gr.Markdown()
                with gr.Tab("Import"):
                    im_files = gr.File(file_count="multiple", label="PNG, JPEG or DICOM images; CT/MR volumes: "
                                       "NIfTI (.nii, .nii.gz), a DICOM series (its .dcm files or one .zip)",
                                       file_types=[".png", ".jpg", ".jpeg", ".dcm", ".nii", ".gz", ".zip"],
                                       elem_id="bc-import-files")
                    im_dataset = gr.Textbox("uploads", label="Dataset name", elem_id="bc-import-dataset")
                    im_btn = gr.Button("Import", variant="primary", elem_id="bc-import-button")
                    im_msg = gr.Markdown(elem_id="bc-import-message")
                with gr.Tab("Users"):
                    users = gr.Dataframe(interactive=False)
                    with gr.Row():
                        u_name = gr.Textbox(label="Name")
                        u_pass = gr.Textbox(label="Password (≥ 8 characters)", type="password")
                        u_role = gr.Radio(["reader", "admin"], value="reader", label="Role")
                    u_btn = gr.Button("Create user")
                    u_msg = gr.Markdown()

                    def audit_log(session: Session) -> pd.DataFrame:
                        """The last 200 sign-in attempts (ok, failed, throttled, busy), newest first."""
                        service.require_admin(session)
                        rows = service.store.audit_log(session.reader, limit=200)
                        return pd.DataFrame([{"at": f"{r.at:%Y-%m-%d %H:%M:%S}", "kind": r.kind, "name": r.user_name,
                                              "reader id": r.reader_id, "address": r.address, "detail": r.detail,
                                              "user agent": r.user_agent} for r in rows],
                                            columns=["at", "kind", "name", "reader id", "address", "detail",
                                                     "user agent"])

                    audit_btn = gr.Button("Show the last sign-in attempts")
                    audit = gr.Dataframe(interactive=False, label="Sign-in audit log (UTC)", elem_id="bc-audit")
                    audit_btn.click(guarded(audit_log), None, audit, api_name="admin_audit_log")
                with gr.Tab("AI sources"):
                    gr.Markdown("The AI a study's aided arm shows: the built-in model, imported predictions (a CXR-LT "
                                "2024 submission CSV: `dicom_id` + one probability column per class, 26 or 40 "
                                "classes, matched to cases by DICOM SOP Instance UID or file name) or a "
                                "torchxrayvision model from a local weights file. Suggested = probability ≥ the "
                                "class's operating point (supplier thresholds for imported predictions; none: "
                                "nothing is suggested).")
                    ai_table = gr.Dataframe(interactive=False, label="AI sources", elem_id="bc-ai-sources")
                    with gr.Row():
                        ai_csv = gr.File(label="Predictions CSV", file_types=[".csv"], elem_id="bc-ai-csv")
                        ai_thresholds = gr.File(label="Thresholds (optional: CSV class,threshold or JSON)",
                                                file_types=[".csv", ".json"], elem_id="bc-ai-thresholds")
                        ai_masks = gr.File(file_count="multiple", label="AI masks (optional: <dicom_id>.png)",
                                           file_types=[".png"], elem_id="bc-ai-masks")
                    with gr.Row():
                        ai_name = gr.Textbox(label="Source name (= version)", elem_id="bc-ai-name")
                        ai_study = gr.Dropdown(["(none)"], value="(none)", label="Match to and attach to study",
                                               allow_custom_value=True, elem_id="bc-ai-study")
                    ai_import_btn = gr.Button("Import predictions", variant="primary", elem_id="bc-ai-import")
                    ai_msg = gr.Markdown(elem_id="bc-ai-message")
                    with gr.Row():
                        xrv_path = gr.Textbox(label="torchxrayvision weights file on the server (.pt, .pth, "
                                                    ".safetensors)")
                        xrv_name = gr.Textbox(label="Source name (blank: from the file)")
                    xrv_btn = gr.Button("Load the model and predict the cases")
                    with gr.Row():
                        attach_study = gr.Dropdown([], label="Study", allow_custom_value=True,
                                                   elem_id="bc-attach-study")
                        attach_source = gr.Dropdown([], label="AI source", allow_custom_value=True,
                                                    elem_id="bc-attach-source")
                    attach_btn = gr.Button("Attach the source to the study", elem_id="bc-attach")
                with gr.Tab("Model"):
                    model_md = gr.Markdown()
                    retriage = gr.Button("Triage new cases")
                    retriage_msg = gr.Markdown()
                with gr.Tab("Training"):
                    training_choices, training_outputs = loop_ui.training_tab(service, guarded)
                with gr.Tab("Exports"):
                    ex_study = gr.Dropdown(["(latest)"], value="(latest)", label="Study (results and iMRMC)",
                                           allow_custom_value=True)
                    ex_kind = gr.Radio(list(admin.EXPORT_KINDS), value=admin.EXPORT_KINDS[0], label="Export")
                    gr.Markdown("Results: one row per reader × case × arm × finding, with the study's name and the "
                                "reader's raw confidence rating (`score`, empty for binary answers). Masks and the "
                                "training manifest cover every annotated case. Nothing to export → a message, no file.")
                    ex_btn = gr.Button("Export", variant="primary")
                    ex_file = gr.File(label="Download")

        filters = [status, class_name, u_min, u_max]
        case_outputs = [viewer, info, answer, message, tabs]

        demo.load(on_load, None, [who, admin_tab, *case_outputs], api_name=False)
        sync_btn.click(sync, None, case_outputs, api_name=False).then(
            worklist, filters, [table, progress], api_name=False)
        demo.load(worklist, filters, [table, progress], api_name="worklist")
        for trigger in (refresh.click, status.change, class_name.change, u_min.release, u_max.release):
            trigger(worklist, filters, [table, progress], api_name=False)
        table.select(open_selected, [table], case_outputs, api_name=False)
        top.click(open_top, filters, case_outputs, api_name=False)
        start.click(open_next_assignment, None, case_outputs, api_name="open_next_assignment").then(
            my_assignments, None, [assignments, reads_left], api_name=False)
        tabs.select(my_assignments, None, [assignments, reads_left], api_name=False)
        read_btn.click(open_read, [read_study, read_order], case_outputs, api_name="open_read")
        def open_case_api(case: str, request: gr.Request) -> dict[str, Any]:
            return _api_open(service, case, request)

        gr.api(open_case_api, api_name="open_case")
        gr.api(click_api, api_name="click")
        gr.api(view_state, api_name="view_state")

        # admin
        admin_tab.select(guarded(adm_users), None, [users], api_name=False).then(
            guarded(adm_choices), None, [st_cases, st_readers, study_pick, ex_study], api_name=False).then(
            guarded(adm_model), None, [model_md], api_name=False).then(
            guarded(adm_ai_sources), None, [ai_table, ai_study, attach_study, attach_source], api_name=False).then(
            training_choices, None, training_outputs, api_name=False)
        ai_import_btn.click(guarded(adm_ai_import), [ai_csv, ai_thresholds, ai_masks, ai_name, ai_study],
                            [ai_msg, ai_table], api_name="admin_import_ai_predictions")
        xrv_btn.click(guarded(adm_xrv), [xrv_path, xrv_name, ai_study], [ai_msg, ai_table], api_name=False)
        attach_btn.click(guarded(adm_attach), [attach_study, attach_source], [ai_msg],
                         api_name="admin_attach_ai_source")
        im_btn.click(guarded(adm_import), [im_files, im_dataset], [im_msg], api_name="admin_import")
        u_btn.click(guarded(adm_create_user), [u_name, u_pass, u_role], [u_msg, users], api_name="admin_create_user")
        st_btn.click(guarded(adm_create_study), [st_name, st_cases, st_readers, st_arms, st_design, st_seed,
                                                 st_washout, st_revisit, st_ratings, st_exclude], [st_msg],
                     api_name="admin_create_study")
        retriage.click(guarded(adm_retriage), None, [retriage_msg], api_name=False)
        ex_btn.click(guarded(adm_export), [ex_study, ex_kind], [ex_file], api_name="admin_export")
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


ASSIGNMENT_COLUMNS = ["study", "read", "session", "arm", "status"]


def assignments_frame(service: AppService, session: Session) -> pd.DataFrame:
    """Every read of the reader, locked sessions included ("locked until <date>")."""
    rows = []
    for study_id, views in _by_study(service.store.assignments_for(session.reader, include_locked=True)).items():
        unlock = {s.number: s.unlocks_at for s in service.store.study_sessions(session.reader, study_id)}
        for a in views:
            status = a.status if a.available else _locked(unlock.get(a.session))
            rows.append({"study": a.study, "read": f"{a.order} of {len(views)}", "session": a.session, "arm": a.arm,
                         "status": status})
    return pd.DataFrame(rows, columns=ASSIGNMENT_COLUMNS)


def reads_left_message(service: AppService, session: Session) -> str:
    """What is left of the reader's protocol once no read is open: done, or which sessions unlock when."""
    lines = []
    for study_id, views in _by_study(service.store.assignments_for(session.reader, include_locked=True)).items():
        for status in service.store.study_sessions(session.reader, study_id):
            if status.submitted < status.reads:
                when = "now" if status.available else _locked(status.unlocks_at)
                lines.append(f"Study **{views[0].study}**, session {status.number} ({'/'.join(status.arms)}): "
                             f"{status.reads - status.submitted} of {status.reads} read(s) left · {when}")
    return "\n\n".join(lines) if lines else "All your assigned reads are done. Thank you!"


def _by_study(views: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for view in views:
        out.setdefault(view.study_id, []).append(view)
    return out


def _locked(unlocks_at: Any) -> str:
    if unlocks_at is None:
        return "locked until the previous session is complete (then the washout period)"
    return f"locked until {unlocks_at:%Y-%m-%d %H:%M} UTC (washout)"


def _chosen_study(study: str | None) -> str | None:
    """A study dropdown's value: None for the latest study."""
    return None if study in (None, "", "(latest)") else study


def _downloadable(path: Path) -> str:
    """A copy of an export in a fresh temporary folder (Gradio serves downloads only from there, never from DATA)."""
    folder = Path(tempfile.mkdtemp(prefix="biascare-export-"))
    target = folder / path.name
    shutil.copyfile(path, target)
    return str(target)
