"""The Azure Functions app: composes one Blueprint per trigger module, nothing else.

Logic lives in the ``visionpipe`` library; triggers live in ``functions/``.
"""

import azure.functions as func

from functions.artifacts_api import bp as artifacts_api_bp
from functions.export_api import bp as export_api_bp
from functions.fallback_api import bp as fallback_api_bp
from functions.health import bp as health_bp
from functions.image_metadata_api import bp as image_metadata_api_bp
from functions.images_api import bp as images_api_bp
from functions.ingest import bp as ingest_bp
from functions.iterations_api import bp as iterations_api_bp
from functions.portal import bp as portal_bp
from functions.predict import bp as predict_bp
from functions.prediction_api import bp as prediction_api_bp
from functions.prediction_images_api import bp as prediction_images_api_bp
from functions.prediction_store_api import bp as prediction_store_api_bp
from functions.project_copy_api import bp as project_copy_api_bp
from functions.projects_api import bp as projects_api_bp
from functions.publish_api import bp as publish_api_bp
from functions.quicktest_api import bp as quicktest_api_bp
from functions.regions_api import bp as regions_api_bp
from functions.tags_api import bp as tags_api_bp
from functions.training_api import bp as training_api_bp
from functions.training_control_api import bp as training_control_api_bp
from functions.training_events import bp as training_events_bp
from functions.visionpipe_api import bp as visionpipe_api_bp

app = func.FunctionApp()

app.register_functions(health_bp)
app.register_functions(ingest_bp)
app.register_functions(predict_bp)
app.register_functions(prediction_api_bp)
app.register_functions(publish_api_bp)
app.register_functions(training_events_bp)
app.register_functions(export_api_bp)
app.register_functions(iterations_api_bp)
app.register_functions(artifacts_api_bp)
app.register_functions(prediction_store_api_bp)
app.register_functions(prediction_images_api_bp)
app.register_functions(quicktest_api_bp)
app.register_functions(training_api_bp)
app.register_functions(projects_api_bp)
app.register_functions(tags_api_bp)
app.register_functions(images_api_bp)
app.register_functions(image_metadata_api_bp)
app.register_functions(regions_api_bp)
app.register_functions(visionpipe_api_bp)
app.register_functions(training_control_api_bp)
app.register_functions(portal_bp)
app.register_functions(project_copy_api_bp)
# Last: the catch-all for /customvision/ requests no route above took (404/405, Custom Vision's
# shape); a catch-all has the lowest precedence in the host's routing anyway.
app.register_functions(fallback_api_bp)
