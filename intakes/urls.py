from django.urls import path

from intakes import api, replay

urlpatterns = [
    path("intake/<str:intake_id>", api.IntakeTriggerApi.as_view(), name="intake-trigger"),
    path("intake/<str:intake_id>/work/<str:work_id>", api.WorkItemDetailApi.as_view(),
         name="work-item-detail"),
    path("intake/<str:intake_id>/work/<str:work_id>/approval", api.WorkItemApprovalApi.as_view(),
         name="work-item-approval"),
    path("intake/<str:intake_id>/work/<str:work_id>/cancel", api.WorkItemCancelApi.as_view(),
         name="work-item-cancel"),
    path("intake/<str:intake_id>/work/<str:work_id>/replay", replay.WorkItemReplayApi.as_view(),
         name="work-item-replay"),
]
