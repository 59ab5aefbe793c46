"""Display formats (FORMAT_MODULE_PATH): the admin shows every time with its time zone."""
