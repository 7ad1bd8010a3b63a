"""The page of `actrec serve`: three Gradio tabs (Predict, Errors, Runs) over a PredictionService.

Import it only after ``server`` has pointed Gradio at the server's own temporary folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

from pipeline.errors import ActrecError
from pipeline.optional import require
from pipeline.serve.media import thumbnail_strip, timeline_rows
from pipeline.serve.runs import leaderboard, mistakes, read_predictions
from pipeline.serve.service import PagePrediction, PredictionService

gr = require("gradio", "`actrec serve`")
pd = require("pandas", "`actrec serve`")

log = logging.getLogger(__name__)

ALL_CLASSES = "all classes"
MAX_STRIPS = 24  # thumbnail strips drawn on the Errors tab: the most confident mistakes
TIMELINE = {"x": "seconds", "y": "probability", "color": "label", "x_title": "seconds", "y_lim": [0, 1],
            "height": 380}
TOP5_HEADERS = ["label", "probability"]
# One colour per timeline label (serve.timeline_labels is at most 10), named in the chart's title: the plot's own
# legend shows no entries in this Gradio.
PALETTE = {"blue": "#1f77b4", "orange": "#ff7f0e", "green": "#2ca02c", "red": "#d62728", "purple": "#9467bd",
           "brown": "#8c564b", "pink": "#e377c2", "grey": "#7f7f7f", "olive": "#bcbd22", "cyan": "#17becf"}
VIDEO_HEIGHT = 320  # pixels: the annotated video leaves room for the timeline below it
ERROR_HEADERS = ["video", "true label", "predicted", "probability"]
# System fonts: the page must not wait on a font server the machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def shown_in_page(handler):
    """Handler errors become an error message in the page (gr.Error); the server keeps serving.

    A refusal (ActrecError: a bad upload, a name that is no test video) is one warning line in the server's log
    and no traceback (Gradio prints none for it); only an unexpected error, a bug, logs its traceback."""
    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except ActrecError as exc:
            message = " ".join(str(exc).split())
            log.warning(f"refused ({handler.__name__}): {message}")
            raise gr.Error(message, print_exception=False) from None
        except Exception as exc:
            log.exception("the page's request failed")
            raise gr.Error(f"{type(exc).__name__}: {str(exc)[:200]} (the server's log has the details)",
                           print_exception=False) from None
    return wrapper


def prediction_outputs(result: PagePrediction, labels: int):
    """(annotated video, timeline, top-5) as the page's components take them."""
    prediction = result.prediction
    top5 = pd.DataFrame([[e["label"], e["probability"]] for e in prediction.video_top(5)], columns=TOP5_HEADERS)
    shown = [e["label"] for e in prediction.video_top(labels)]
    colours = dict(zip(shown, PALETTE))
    timeline = gr.LinePlot(value=pd.DataFrame(timeline_rows(prediction, labels)),
                           color_map={label: PALETTE[name] for label, name in colours.items()},
                           label="Timeline: " + ", ".join(f"{label} ({name})" for label, name in colours.items()))
    return str(result.annotated), timeline, top5


def build_page(service: PredictionService) -> gr.Blocks:
    names = list(service.runs)
    first = service.runs[names[0]]
    labels = service.settings.timeline_labels

    def progress_of(progress):
        return lambda fraction, what: progress(fraction, desc=what)

    @shown_in_page
    def predict_upload(run_name: str, video: str | None, progress=gr.Progress()):
        if not video:
            raise ActrecError("upload a video first (or pick one of the run's test videos)")
        video = Path(video)
        service.check_upload(video)
        try:
            return prediction_outputs(service.predict(service.run(run_name), video, progress_of(progress)), labels)
        except ActrecError as exc:  # name the upload as its sender knows it, not by the server's temporary path
            raise ActrecError(str(exc).replace(str(video), video.name)) from exc

    @shown_in_page
    def predict_test_video(run_name: str, name: str | None, progress=gr.Progress()):
        run = service.run(run_name)
        if not name:
            raise ActrecError("pick one of the run's test videos")
        return prediction_outputs(service.predict(run, service.test_video(run, name), progress_of(progress)), labels)

    @shown_in_page
    def show_run(run_name: str):
        """Everything that follows the chosen run: test videos, class filter, errors, figures."""
        run = service.run(run_name)
        table, strips, note = errors_of(run_name, ALL_CLASSES)
        return (gr.Dropdown(choices=sorted(run.test_videos), value=None),
                gr.Dropdown(choices=[ALL_CLASSES] + run.class_names, value=ALL_CLASSES), table, strips, note,
                run.figure("curves.png"), run.figure("confusion_matrix.png"))

    def errors_of(run_name: str, true_label: str):
        run = service.run(run_name)
        try:
            rows = mistakes(read_predictions(run), None if true_label == ALL_CLASSES else true_label)
        except ActrecError as exc:
            return pd.DataFrame(columns=ERROR_HEADERS), [], f"**No errors to show:** {exc}"
        table = pd.DataFrame([[r["video"], r["true_label"], r["label1"], float(r["probability1"])] for r in rows],
                             columns=ERROR_HEADERS)
        strips = []
        for row in rows[:MAX_STRIPS]:
            if row["video"] in run.test_videos:
                key = hashlib.sha1(f"{run.name}/{row['video']}".encode()).hexdigest()[:16]
                strip = thumbnail_strip(run.test_videos[row["video"]], service.settings.thumbnails,
                                        service.workdir / "thumbnails" / f"{key}.jpg")
                strips.append((str(strip), f"{row['video']}: {row['true_label']} taken for {row['label1']} "
                                           f"({float(row['probability1']):.0%})"))
        note = (f"{len(rows)} wrong test videos of {run.name}, most confident mistakes first; select one to see "
                f"its timeline.")
        return table, strips, note

    @shown_in_page
    def filter_errors(run_name: str, true_label: str):
        return errors_of(run_name, true_label)

    @shown_in_page
    def show_error(run_name: str, table: pd.DataFrame, evt: gr.SelectData, progress=gr.Progress()):
        row = evt.index if isinstance(evt.index, int) else evt.index[0]  # a gallery item or a table cell
        if not 0 <= row < len(table):
            raise ActrecError("select one of the listed videos")
        run = service.run(run_name)
        name = str(table.iloc[row]["video"])
        result = service.predict(run, service.test_video(run, name), progress_of(progress))
        return (*prediction_outputs(result, labels), f"**{name}**")

    @shown_in_page
    def show_figures(run_name: str):
        run = service.run(run_name)
        return run.figure("curves.png"), run.figure("confusion_matrix.png")

    with gr.Blocks(title="actrec", analytics_enabled=False) as page:
        gr.Markdown("## actrec: what the model does")
        run_choice = gr.Dropdown(choices=names, value=names[0], label="Run (its best.pt predicts)",
                                 interactive=len(names) > 1)
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    upload = gr.Video(label="Video to label", sources=["upload"], format=None, elem_id="upload")
                    upload_button = gr.Button("Predict the uploaded video", variant="primary", elem_id="predict")
                    # Custom values: the choices follow the chosen run; the service checks each name it is given.
                    test_choice = gr.Dropdown(label="...or one of the run's test videos", allow_custom_value=True,
                                              choices=sorted(first.test_videos))
                    test_button = gr.Button("Predict this test video")
                with gr.Column():
                    annotated = gr.Video(label="Annotated video", interactive=False, height=VIDEO_HEIGHT)
                    top5 = gr.Dataframe(headers=TOP5_HEADERS, label="Video-level top-5", interactive=False,
                                        elem_id="top5")
            timeline = gr.LinePlot(label="Timeline: the top labels' probabilities over the video", **TIMELINE)
        with gr.Tab("Errors"):
            note = gr.Markdown()
            class_filter = gr.Dropdown(label="True class", choices=[ALL_CLASSES] + first.class_names,
                                       value=ALL_CLASSES, allow_custom_value=True)
            errors = gr.Dataframe(headers=ERROR_HEADERS, label="Wrong test videos", interactive=False, max_height=300)
            strips = gr.Gallery(label="Thumbnails (select one to see its timeline)", columns=3, height=300,
                                object_fit="contain", allow_preview=False, elem_id="strips")
            chosen = gr.Markdown()
            with gr.Row():
                error_video = gr.Video(label="Annotated video", interactive=False, height=VIDEO_HEIGHT)
                error_top5 = gr.Dataframe(headers=TOP5_HEADERS, label="Video-level top-5", interactive=False,
                                          elem_id="error_top5")
            error_timeline = gr.LinePlot(label="Timeline", **TIMELINE)
        with gr.Tab("Runs"):
            gr.Dataframe(value=pd.DataFrame(leaderboard(list(service.runs.values()))), interactive=False,
                         label="Leaderboard (click a column title to sort)")
            figure_choice = gr.Dropdown(choices=names, value=names[0], label="Run")
            with gr.Row():
                curves = gr.Image(label="Training curves", type="filepath", interactive=False, elem_id="curves")
                confusion = gr.Image(label="Confusion matrix (test)", type="filepath", interactive=False)

        prediction = [annotated, timeline, top5]
        upload_button.click(predict_upload, [run_choice, upload], prediction, api_name="predict")
        test_button.click(predict_test_video, [run_choice, test_choice], prediction, api_name="predict_test_video")
        run_outputs = [test_choice, class_filter, errors, strips, note, curves, confusion]
        page.load(show_run, [run_choice], run_outputs, api_visibility="private")
        run_choice.change(show_run, [run_choice], run_outputs, api_visibility="private")
        class_filter.change(filter_errors, [run_choice, class_filter], [errors, strips, note], api_name="errors")
        error_outputs = [error_video, error_timeline, error_top5, chosen]
        errors.select(show_error, [run_choice, errors], error_outputs, api_visibility="private")
        strips.select(show_error, [run_choice, errors], error_outputs, api_visibility="private")
        figure_choice.change(show_figures, [figure_choice], [curves, confusion], api_visibility="private")
    return page

