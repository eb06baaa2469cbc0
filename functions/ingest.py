"""Event Grid trigger for the training drop folder (``training-images``)."""

import logging

import azure.functions as func

from visionpipe import names
from visionpipe.blob_names import escape_name
from visionpipe.pipeline.events import EventRefused, from_grid_event
from visionpipe.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name(names.INGEST_FUNCTION)
@bp.event_grid_trigger(arg_name="event")
def ingest_training_image(event: func.EventGridEvent) -> None:
    # Imported on first use: the storage SDK and Pillow would otherwise weigh on every cold start
    # of the app, including instances that only serve HTTP.
    from visionpipe.api.context import app_storage
    from visionpipe.pipeline.ingest import ingest_training_blob

    try:
        blob = from_grid_event(event, names.TRAINING_IMAGES)
    except EventRefused as e:
        # Retrying cannot help: acknowledge, but say so loudly.
        log.error("refused: %s", e)
        return
    result = ingest_training_blob(blob, app_storage(), get_settings())
    # The name came from the event: escaped, so a hostile one cannot forge log lines.
    log.info("ingest %s/%s -> %s", result.container, escape_name(result.path), result.outcome)
