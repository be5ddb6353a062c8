"""The app behind live-pull's proxy: started before the proxy imports its HTTP stack, so
the two boot side by side."""

from __future__ import annotations

import subprocess

from entrypoint.processes import BEHIND_PROXY, TAG_VARIABLE, die_with_parent
from entrypoint.shell import shell_line
from entrypoint.switching.plan import ProxyPlan


def start_app(command: str, env: dict[str, str], plan: ProxyPlan) -> subprocess.Popen[bytes]:
    """The web command on the plan's private port."""
    return subprocess.Popen(
        ["/bin/sh", "-c", shell_line(command)],
        # Tagged apart from the slot: the agent's stop of the slot SIGTERMs what carries
        # the slot's tag at once, while this app must outlive the proxy's drain.
        env={**env, "PORT": str(plan.port), TAG_VARIABLE: env[TAG_VARIABLE] + BEHIND_PROXY},
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the drain order is ours: the app stops after the proxy
        preexec_fn=die_with_parent(),
    )
