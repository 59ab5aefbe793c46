"""`manage.py runserver` (the server of `make run`): Django's, static files included, which
refuses a header read as one value sent twice as the gunicorn worker does
(auxot/singleheaders.py): its wsgiref handler would join the two with a comma."""

from django.contrib.staticfiles.management.commands.runserver import Command as StaticRunserver
from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer

from auxot.singleheaders import SingleValuedHeadersHandler


class RequestHandler(SingleValuedHeadersHandler, WSGIRequestHandler):
    pass


class Server(WSGIServer):
    def __init__(self, server_address, _handler_class, *args, **kwargs) -> None:
        # django.core.servers.basehttp.run() passes its own handler class: ours replaces it.
        super().__init__(server_address, RequestHandler, *args, **kwargs)


class Command(StaticRunserver):
    server_cls = Server
