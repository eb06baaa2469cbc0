"""Custom Vision's train route (ARCHITECTURE.md, "HTTP API"), ``Training-Key``:

``POST /customvision/{v}/training/projects/{projectId}/train?trainingType=&reservedBudgetInHours=
&forceTrain=&notificationEmailAddress=`` (optional body ``{"selectedTags": [...]}``) -> Iteration.

Creates the iteration (status Training) and queues its request on ``training-requests``; the
training job does the rest. Logic in :mod:`visionpipe.api.training`.
"""

import azure.functions as func

bp = func.Blueprint()

TRAIN_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/train"


@bp.function_name("train_project")
@bp.route(route=TRAIN_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def train_project(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe.api.adapter import json_body, query, training_call
    from visionpipe.api.iterations import IterationApi
    from visionpipe.api.training import train

    def act() -> object:
        params = query(req)
        selected = json_body(req).strings("selectedTags", max_items=256, max_length=64)
        # notificationEmailAddress: accepted; visionpipe notifies on the training-events queue.
        return train(IterationApi.for_request(req), req.route_params["projectId"],
                     training_type=params.string("trainingType", max_length=64),
                     reserved_budget_in_hours=params.integer("reservedBudgetInHours", 0, 0,
                                                             10_000),
                     force_train=params.flag("forceTrain", False),
                     selected_tags=selected)

    return training_call(req, act)
