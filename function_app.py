"""The Azure Functions app: composes one Blueprint per trigger module, nothing else.

Logic lives in the ``visionpipe`` library; triggers live in ``functions/``.
"""

import azure.functions as func

from functions.health import bp as health_bp
from functions.ingest import bp as ingest_bp

app = func.FunctionApp()

app.register_functions(health_bp)
app.register_functions(ingest_bp)
