"""Custom Vision's train route (DESIGN §6), ``Training-Key``:

``POST /customvision/{v}/training/projects/{projectId}/train?trainingType=&reservedBudgetInHours=
&forceTrain=&notificationEmailAddress=`` (optional body ``{"selectedTags": [...]}``) -> Iteration.

Creates the iteration (status Training) and queues its request on ``training-requests``; the
training job does the rest. Logic in :mod:`visionpipe.api_training`.
"""

import azure.functions as func

bp = func.Blueprint()

TRAIN_ROUTE = "customvision/{apiVersion}/training/projects/{projectId}/train"


@bp.function_name("train_project")
@bp.route(route=TRAIN_ROUTE, methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def train_project(req: func.HttpRequest) -> func.HttpResponse:
    from visionpipe import api_errors
    from visionpipe.api_adapter import flag, json_body, training_call
    from visionpipe.api_iterations import IterationApi
    from visionpipe.api_training import train

    def act() -> object:
        body = json_body(req)
        selected = body.get("selectedTags") or []
        if not isinstance(selected, list) or not all(isinstance(t, str) for t in selected):
            raise api_errors.bad_request("BadRequest", "selectedTags must be a list of tag ids")
        try:
            budget = int(req.params.get("reservedBudgetInHours") or 0)
        except ValueError as e:
            raise api_errors.bad_request("BadRequest",
                                         "reservedBudgetInHours must be an integer") from e
        # notificationEmailAddress: accepted; visionpipe notifies on the training-events queue.
        return train(IterationApi.create(), req.route_params["projectId"],
                     training_type=req.params.get("trainingType") or None,
                     reserved_budget_in_hours=budget,
                     force_train=flag(req.params.get("forceTrain"), False),
                     selected_tags=selected)

    return training_call(req, act)
