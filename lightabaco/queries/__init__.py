"""Views across the lifecycle and sharing: `search` (spec §2.11, over actors, executions, workers and
logs, limited to what the caller may read) and `admin` (utilization, admin listings, the admin's user
calls and the on-demand cron pass).

May import: lightabaco.abaco, lightabaco.automation (admin's cron pass), lightabaco.sharing,
lightabaco.protocol, lightabaco.store. Only HTTP and the command line import it.
"""
