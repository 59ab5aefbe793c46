from django.urls import path

from intakes import api

urlpatterns = [
    path("intake/<str:intake_id>", api.IntakeTriggerApi.as_view(), name="intake-trigger"),
    path("intake/<str:intake_id>/work/<str:work_id>", api.WorkItemDetailApi.as_view(),
         name="work-item-detail"),
]
