"""Test support for the blog platform, loaded as the pytest plugin `blog_testkit`.

Fixtures (see `blog_testkit.plugin`): `stack`, `database_url`, `topic`, `es_prefix`,
`service_processes`. Helpers: `wait_until`, `ServiceProcess`, `free_port`.
"""

from blog_testkit.processes import ServiceProcess, free_port
from blog_testkit.stack import NO_STACK_MESSAGE, Stack
from blog_testkit.waiting import wait_until

__all__ = ["NO_STACK_MESSAGE", "ServiceProcess", "Stack", "free_port", "wait_until"]
