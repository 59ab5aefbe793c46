"""The two ceilings bench/ measures the API against, on the same server in the same run.

Mounted only with AUXOT_BENCH_CEILINGS=1. Deliberately the least a DRF endpoint can do:
parse JSON, one INSERT + COMMIT, 202; and one GET of one row by primary key.
"""

import json

from django.urls import path
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from intakes.models import Intake

# A queue name no cluster reads: the rows are inert and bench/run.py clears the table.
CEILING_QUEUE = "bench-ceiling"


class InsertCeilingApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]

    def post(self, request: Request) -> Response:
        # Not the audit table: it is append-only (a PostgreSQL trigger refuses the cleanup).
        row = OrmQ.objects.create(key=CEILING_QUEUE, payload=json.dumps(request.data),
                                  lock=timezone.now())
        return Response({"id": row.pk}, status=202)


class GetCeilingApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request, pk: str) -> Response:
        intake = Intake.objects.get(pk=pk)
        return Response({"id": str(intake.pk), "name": intake.name})


urlpatterns = [
    path("bench/insert", InsertCeilingApi.as_view()),
    path("bench/row/<str:pk>", GetCeilingApi.as_view()),
]
