from django.contrib import admin

from intakes.admin_callbacks import IntakeCallbacksAdminMixin
from intakes.models import Intake


@admin.register(Intake)
class IntakeAdmin(IntakeCallbacksAdminMixin, admin.ModelAdmin):
    list_display = ["name", "id", "workflow", "team", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["id", "name"]
    readonly_fields = ["id", "created_by", "created_at", "deactivated_at"]
