"""The page of `actrec serve`: four Gradio tabs (Predict, Errors, Runs, Search) over a PredictionService and a
SearchService.

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
from pipeline.serve.searching import SearchService
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
HIT_HEADERS = ["rank", "video", "class", "score", "spans (s)"]
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


class Handlers:
    """What the page's events call, over one PredictionService: each refusal becomes a message in the page."""

    def __init__(self, service: PredictionService):
        self.service = service
        self.labels = service.settings.timeline_labels
        self.searches = SearchService(service.workdir)

    @staticmethod
    def progress_of(progress):
        return lambda fraction, what: progress(fraction, desc=what)

    def outputs(self, run, video: Path, progress) -> tuple:
        return prediction_outputs(self.service.predict(run, video, self.progress_of(progress)), self.labels)

    @shown_in_page
    def predict_upload(self, run_name: str, video: str | None, progress=gr.Progress()):
        if not video:
            raise ActrecError("upload a video first (or pick one of the run's test videos)")
        video = Path(video)
        self.service.check_upload(video)
        try:
            return self.outputs(self.service.run(run_name), video, progress)
        except ActrecError as exc:  # name the upload as its sender knows it, not by the server's temporary path
            raise ActrecError(str(exc).replace(str(video), video.name)) from exc

    @shown_in_page
    def predict_test_video(self, run_name: str, name: str | None, progress=gr.Progress()):
        run = self.service.run(run_name)
        if not name:
            raise ActrecError("pick one of the run's test videos")
        return self.outputs(run, self.service.test_video(run, name), progress)

    @shown_in_page
    def show_run(self, run_name: str):
        """Everything that follows the chosen run: test videos, class filter, errors, figures."""
        run = self.service.run(run_name)
        table, strips, note = self.errors_of(run_name, ALL_CLASSES)
        return (gr.Dropdown(choices=sorted(run.test_videos), value=None),
                gr.Dropdown(choices=[ALL_CLASSES] + run.class_names, value=ALL_CLASSES), table, strips, note,
                run.figure("curves.png"), run.figure("confusion_matrix.png"))

    def errors_of(self, run_name: str, true_label: str):
        run = self.service.run(run_name)
        try:
            rows = mistakes(read_predictions(run), None if true_label == ALL_CLASSES else true_label)
        except ActrecError as exc:
            return pd.DataFrame(columns=ERROR_HEADERS), [], f"**No errors to show:** {exc}"
        table = pd.DataFrame([[r["video"], r["true_label"], r["label1"], float(r["probability1"])] for r in rows],
                             columns=ERROR_HEADERS)
        strips = [self.strip(run, row) for row in rows[:MAX_STRIPS] if row["video"] in run.test_videos]
        note = (f"{len(rows)} wrong test videos of {run.name}, most confident mistakes first; select one to see "
                f"its timeline.")
        return table, strips, note

    def strip(self, run, row: dict) -> tuple[str, str]:
        """A mistake's thumbnail strip and its caption."""
        key = hashlib.sha1(f"{run.name}/{row['video']}".encode()).hexdigest()[:16]
        strip = thumbnail_strip(run.test_videos[row["video"]], self.service.settings.thumbnails,
                                self.service.workdir / "thumbnails" / f"{key}.jpg")
        return str(strip), (f"{row['video']}: {row['true_label']} taken for {row['label1']} "
                            f"({float(row['probability1']):.0%})")

    @shown_in_page
    def filter_errors(self, run_name: str, true_label: str):
        return self.errors_of(run_name, true_label)

    @shown_in_page
    def show_error(self, run_name: str, table: pd.DataFrame, evt: gr.SelectData, progress=gr.Progress()):
        row = evt.index if isinstance(evt.index, int) else evt.index[0]  # a gallery item or a table cell
        if not 0 <= row < len(table):
            raise ActrecError("select one of the listed videos")
        run = self.service.run(run_name)
        name = str(table.iloc[row]["video"])
        return (*self.outputs(run, self.service.test_video(run, name), progress), f"**{name}**")

    @shown_in_page
    def search(self, run_name: str, query: str, k: float):
        """The run's cache searched: a thumbnail per video at its best span, and the table of hits."""
        run = self.service.run(run_name)
        hits = self.searches.search(run, query, int(k))
        table = pd.DataFrame([[h.rank, h.video, h.label, h.score, ", ".join(
            f"{s.start_seconds:.2f}-{s.end_seconds:.2f}" for s in h.spans)] for h in hits], columns=HIT_HEADERS)
        gallery = [(self.searches.thumbnail(run, h), f"{h.rank}. {h.video} ({h.score:.3f}, "
                                                     f"{h.spans[0].start_seconds:.2f} s)") for h in hits]
        return gallery, table

    @shown_in_page
    def show_hit(self, run_name: str, query: str, k: float, evt: gr.SelectData):
        """The selected hit's video, from its best span."""
        run = self.service.run(run_name)
        row = evt.index if isinstance(evt.index, int) else evt.index[0]
        hits = self.searches.search(run, query, int(k))
        if not 0 <= row < len(hits):
            raise ActrecError("select one of the listed videos")
        return self.searches.clip(run, hits[row])

    @shown_in_page
    def show_figures(self, run_name: str):
        run = self.service.run(run_name)
        return run.figure("curves.png"), run.figure("confusion_matrix.png")


def predict_tab(on: Handlers, run_choice, first) -> dict:
    """The Predict tab: an upload or a test video -> the annotated video, its timeline and top-5."""
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
    prediction = [annotated, timeline, top5]
    upload_button.click(on.predict_upload, [run_choice, upload], prediction, api_name="predict")
    test_button.click(on.predict_test_video, [run_choice, test_choice], prediction, api_name="predict_test_video")
    return {"test_choice": test_choice}


def errors_tab(on: Handlers, run_choice, first) -> dict:
    """The Errors tab: the run's wrong test videos, most confident first, with thumbnails and timelines."""
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
    class_filter.change(on.filter_errors, [run_choice, class_filter], [errors, strips, note], api_name="errors")
    error_outputs = [error_video, error_timeline, error_top5, chosen]
    errors.select(on.show_error, [run_choice, errors], error_outputs, api_visibility="private")
    strips.select(on.show_error, [run_choice, errors], error_outputs, api_visibility="private")
    return {"class_filter": class_filter, "errors": errors, "strips": strips, "note": note}


def runs_tab(on: Handlers, names: list[str]) -> dict:
    """The Runs tab: the leaderboard of every served run, and one run's curves and confusion matrix."""
    with gr.Tab("Runs"):
        gr.Dataframe(value=pd.DataFrame(leaderboard(list(on.service.runs.values()))), interactive=False,
                     label="Leaderboard (click a column title to sort)")
        figure_choice = gr.Dropdown(choices=names, value=names[0], label="Run")
        with gr.Row():
            curves = gr.Image(label="Training curves", type="filepath", interactive=False, elem_id="curves")
            confusion = gr.Image(label="Confusion matrix (test)", type="filepath", interactive=False)
    figure_choice.change(on.show_figures, [figure_choice], [curves, confusion], api_visibility="private")
    return {"curves": curves, "confusion": confusion}


def search_tab(on: Handlers, run_choice) -> None:
    """The Search tab: a text (OpenCLIP caches) or ``like: VIDEO@SECONDS`` -> the best videos of the run's cache,
    a thumbnail at each match, the video playing from the matched time."""
    with gr.Tab("Search"):
        with gr.Row():
            query = gr.Textbox(label="Query: a text (an OpenCLIP cache), or like: VIDEO@SECONDS", elem_id="query")
            k = gr.Number(value=8, minimum=1, maximum=100, precision=0, label="videos")
        button = gr.Button("Search the run's cache", variant="primary")
        hits = gr.Gallery(label="Matches (select one to play it from the matched time)", columns=4, height=300,
                          object_fit="contain", allow_preview=False, elem_id="hits")
        table = gr.Dataframe(headers=HIT_HEADERS, label="Matches", interactive=False)
        clip = gr.Video(label="The match", interactive=False, height=VIDEO_HEIGHT, autoplay=True)
    button.click(on.search, [run_choice, query, k], [hits, table], api_name="search")
    query.submit(on.search, [run_choice, query, k], [hits, table], api_visibility="private")
    hits.select(on.show_hit, [run_choice, query, k], [clip], api_visibility="private")
    table.select(on.show_hit, [run_choice, query, k], [clip], api_visibility="private")


def build_page(service: PredictionService) -> gr.Blocks:
    """The page: the run chooser, then the Predict, Errors, Runs and Search tabs; choosing a run refreshes the
    first three."""
    on, names = Handlers(service), list(service.runs)
    first = service.runs[names[0]]
    with gr.Blocks(title="actrec", analytics_enabled=False) as page:
        gr.Markdown("## actrec: what the model does")
        run_choice = gr.Dropdown(choices=names, value=names[0], label="Run (its best.pt predicts)",
                                 interactive=len(names) > 1)
        parts = {**predict_tab(on, run_choice, first), **errors_tab(on, run_choice, first), **runs_tab(on, names)}
        search_tab(on, run_choice)
        run_outputs = [parts[name] for name in ("test_choice", "class_filter", "errors", "strips", "note", "curves",
                                                "confusion")]
        page.load(on.show_run, [run_choice], run_outputs, api_visibility="private")
        run_choice.change(on.show_run, [run_choice], run_outputs, api_visibility="private")
    return page
