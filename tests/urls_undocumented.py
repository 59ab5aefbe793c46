"""The real urlconf plus one undocumented /v1/ endpoint (for tests/intakes/test_openapi.py)."""

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from auxot.urls import urlpatterns as real_urlpatterns


class UndocumentedApi(APIView):
    def post(self, request, intake_id: str, work_id: str) -> Response:
        return Response({})


urlpatterns = [
    path("v1/intake/<str:intake_id>/work/<str:work_id>/frobnicate", UndocumentedApi.as_view()),
    *real_urlpatterns,
]
