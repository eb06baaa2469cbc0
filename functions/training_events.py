"""Queue trigger for ``training-events``: record what training reported, maybe auto-publish."""

import logging

import azure.functions as func

from visionpipe import names
from visionpipe.messages import TrainingEvent
from visionpipe.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name(names.TRAINING_EVENTS_FUNCTION)
@bp.queue_trigger(arg_name="msg", queue_name=f"%{names.SETTING_TRAINING_EVENTS_QUEUE}%",
                  connection=names.STORAGE_CONNECTION)
def on_training_event(msg: func.QueueMessage) -> None:
    from visionpipe.api.context import RequestContext
    from visionpipe.pipeline.publishing import AutoPublishConfig, handle_training_event

    # A message that is not a training event raises BadMessage: after maxDequeueCount tries the
    # runtime moves it to the poison queue, where it stays for a person to look at. An event
    # that its iteration's artifacts do not back (forged, early) is ignored: outcome "Ignored".
    event = TrainingEvent.from_json(msg.get_body())
    ctx = RequestContext.create()
    outcome = handle_training_event(event, ctx.registry, ctx.label_store,
                                    AutoPublishConfig.from_settings(get_settings()))
    log.info("training event %s for %s/%s (dequeue %s) -> %s%s", event.training_status,
             event.project_id, event.iteration_id, msg.dequeue_count, outcome.status,
             f", published as {outcome.published.publish_name!r}" if outcome.published else
             f" because {outcome.ignored_because}" if outcome.ignored_because else "")
