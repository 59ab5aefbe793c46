"""The two ceilings bench/ measures the API against, on the same server in the same run.

Mounted only with AUXOT_BENCH_CEILINGS=1. Deliberately the least a DRF endpoint can do:
parse JSON, one INSERT + COMMIT, 202; and one GET of one row by primary key.
"""

from django.urls import path
from django.utils import timezone
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from auxot.models import AuditEvent
from intakes.models import Intake


class InsertCeilingApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]

    def post(self, request: Request) -> Response:
        row = AuditEvent.objects.create(event="bench.ceiling", extra=request.data,
                                        created_at=timezone.now())
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
