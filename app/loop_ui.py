"""Admin → Training: start a training job, watch it live (progress bar, loss curve, log), cancel it; the registry's
checkpoints with the gate's side-by-side comparison; promote and roll back. Every handler goes through
:mod:`app.loop` (admins only, checked server-side)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from app import loop
from app.service import AppService, Session

POLL_S = 2.0


def training_tab(service: AppService, guarded: Callable[[Callable[..., Any]], Callable[..., Any]],
                 ) -> tuple[Callable[..., Any], list[Any]]:
    """The tab's components and handlers (call inside a ``gr.Tab``); ``guarded`` is the UI's admin wrapper.
    Returns the handler that fills the tab's choices (and starts its live poll) and its outputs, for the admin tab's
    select event."""
    from app.worker import RECIPES

    gr.Markdown("Jobs run in `python launch.py worker --db URL --data DIR` processes (one per GPU machine). The "
                "site's held-out corrections are never trained on: the gate compares every candidate with the "
                "model in use on them.")
    with gr.Row():
        recipe = gr.Dropdown(list(RECIPES), value="quick", label="Recipe preset")
        task = gr.Radio(["seg", "seg,cls"], value="seg", label="Task (seg,cls: the findings heads too)")
        init = gr.Dropdown(["in-use", "stock"], value="in-use", allow_custom_value=True,
                           label="Start from (in-use, stock or a checkpoint id)")
        max_steps = gr.Number(None, precision=0, label="Max steps (empty: the recipe's)")
    with gr.Row():
        datasets = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Datasets (empty: all)")
        studies = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                              label="Studies' aided reads (empty: all)")
        free = gr.Checkbox(True, label="Free annotations")
        auto = gr.Checkbox(False, label="Promote automatically when the rule holds")
        min_images = gr.Number(10, precision=0, label="…on at least N held-out images")
    start = gr.Button("Start training job", variant="primary")
    message = gr.Markdown()
    jobs = gr.Dataframe(interactive=False, label="Jobs (newest first)")
    with gr.Row():
        job_id = gr.Number(None, precision=0, label="Job")
        cancel = gr.Button("Cancel job")
    headline = gr.Markdown()
    curve = gr.LinePlot(x="step", y="loss", title="Loss", x_title="step", y_title="loss")
    log_box = gr.Textbox(lines=10, max_lines=10, label="Log", interactive=False)
    timer = gr.Timer(POLL_S, active=False)  # started when an admin opens the tab
    gr.Markdown("### Models")
    heldout = gr.Markdown()
    checkpoints = gr.Dataframe(interactive=False, label="Registered checkpoints (newest first)")
    with gr.Row():
        checkpoint_id = gr.Number(None, precision=0, label="Checkpoint")
        compare_btn = gr.Button("Show comparison")
        promote_btn = gr.Button("Promote", variant="primary")
        rollback_btn = gr.Button("Roll back to it")
    comparison = gr.Markdown()

    def on_start(session: Session, recipe_name, task_name, start_from, steps, chosen_datasets, chosen_studies,
                 use_free, automatic, least):
        picked = int(start_from) if str(start_from).isdigit() else start_from
        new_id = loop.start_job(service, session, task=task_name, recipe=recipe_name, datasets=chosen_datasets,
                                studies=chosen_studies, free=bool(use_free), init=picked,
                                max_steps=int(steps) if steps else None, auto_promote=bool(automatic),
                                min_images=int(least or 10))
        return f"job {new_id} queued", loop.jobs_frame(service, session), new_id

    def on_poll(session: Session, chosen):
        frame = loop.jobs_frame(service, session)
        if not chosen and not frame.empty:
            chosen = int(frame["id"].iloc[0])
        if not chosen:
            return frame, "No job yet.", None, ""
        view = loop.job_view(service, session, int(chosen))
        return frame, view["headline"], view["curve"], view["log"]

    def on_choices(session: Session):
        service.require_admin(session)
        from sqlalchemy import select

        from annotations_db.models import Dataset
        from app import admin
        with service.store.read_session() as s:
            names = list(s.scalars(select(Dataset.name).order_by(Dataset.id)))
        return (gr.update(choices=names), gr.update(choices=admin.studies(service)),
                loop.checkpoints_frame(service, session), gr.Timer(active=True), loop.heldout_summary(service, session))

    def on_cancel(session: Session, chosen):
        return loop.cancel_job(service, session, int(chosen or 0))

    def on_compare(session: Session, chosen):
        return loop.comparison_markdown(service, session, int(chosen or 0))

    def on_promote(session: Session, chosen):
        done = loop.promote(service, session, int(chosen or 0))
        return done, loop.checkpoints_frame(service, session)

    def on_rollback(session: Session, chosen):
        done = loop.rollback(service, session, int(chosen or 0))
        return done, loop.checkpoints_frame(service, session)

    start.click(guarded(on_start), [recipe, task, init, max_steps, datasets, studies, free, auto, min_images],
                [message, jobs, job_id], api_name="admin_start_job")
    timer.tick(guarded(on_poll), [job_id], [jobs, headline, curve, log_box], api_name="admin_job_progress")
    cancel.click(guarded(on_cancel), [job_id], [message], api_name="admin_cancel_job")
    compare_btn.click(guarded(on_compare), [checkpoint_id], [comparison], api_name="admin_compare")
    promote_btn.click(guarded(on_promote), [checkpoint_id], [comparison, checkpoints], api_name="admin_promote")
    rollback_btn.click(guarded(on_rollback), [checkpoint_id], [comparison, checkpoints], api_name="admin_rollback")
    return guarded(on_choices), [datasets, studies, checkpoints, timer, heldout]
