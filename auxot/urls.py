"""Root URLs: the composition root, with settings the only core module that names the apps."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from auxot import views
from intakes import admin_views
from intakes.ops import views as ops_views

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/poll-stuck/", admin.site.admin_view(admin_views.poll_stuck),
         name="admin-poll-stuck"),
    path("admin/", admin.site.urls),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("v1/problems", views.problem_index, name="problem-index"),
    path("v1/problems/<str:code>", views.problem_detail, name="problem-detail"),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    # GET and HEAD only: its OPTIONS rendered the page's template with no template name (a 500).
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="schema",
                                                   http_method_names=["get", "head"]),
         name="docs"),
    path("v1/", include("intakes.urls")),
    re_path(r"^v1(?:/.*)?$", views.api_not_found),  # last: anything else under /v1/
]

if settings.DEBUG:  # the demo's http example posts here; never mounted in production
    from intakes.demo.views import demo_echo

    urlpatterns.append(path("demo/echo", demo_echo, name="demo-echo"))

handler400 = "auxot.views.handler400"
handler403 = "auxot.views.handler403"
handler404 = "auxot.views.handler404"
handler500 = "auxot.views.handler500"

if settings.AUXOT_BENCH_CEILINGS:  # bench/ only: see intakes/bench_views.py
    from intakes import bench_views

    urlpatterns += bench_views.urlpatterns
