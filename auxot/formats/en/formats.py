# Every time the admin shows (lists, read-only fields: the audit log, work history) says
# which zone it is in: "Dec. 2, 2026, 6:29 p.m." left an auditor to guess. Sortable, too.
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
