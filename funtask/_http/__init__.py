"""funtask's own HTTP layer: one route table, a lean ASGI dispatcher and the handlers.

``routes`` is the table (and nothing else imports from here below the
server layer); ``exchange`` wraps one ASGI request; ``dispatch`` serves the
table's routes and hands every other request to the quart-trio app in
``funtask._app``; ``jobs`` and ``status`` hold the handlers.
"""
