# Step.kind reads its choices from the step-kind registry (workflows.kinds).

import workflows.kinds
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('workflows', '0004_provider_api_key_secret'),
    ]

    operations = [
        migrations.AlterField(
            model_name='step',
            name='kind',
            field=models.CharField(choices=workflows.kinds.kind_choices, max_length=32),
        ),
    ]
