import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "auxot.settings")
# This process serves HTTP from many threads: settings give it a bounded connection pool.
os.environ.setdefault("AUXOT_WEB_PROCESS", "1")

from auxot.bodydeadline import BodyReadDeadline  # after the environment is set

application = BodyReadDeadline(get_wsgi_application())
