"""Build hook: compile aioproc's one C module, ``aioproc/_lineiter.c``, in place.

It only speeds up ``OutputStream.lines()``; without it (no C compiler, a
compiler error) aioproc is installed as pure Python and ``lines()`` uses its
async generator instead, with the same behaviour. So a failure here is a
warning, never a failed install.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = os.path.join("aioproc", "_lineiter.c")


class CustomBuildHook(BuildHookInterface):
    """Compiles ``_lineiter.c`` next to it (found there by editable installs and
    shipped in wheels through ``artifacts``)."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        source = os.path.join(self.root, SOURCE)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = os.path.join(self.root, "aioproc", "_lineiter" + suffix)
        # AIOPROC_NO_C=1 installs pure Python on purpose.
        if os.environ.get("AIOPROC_NO_C") or not compile_extension(source, target):
            if os.path.exists(target):
                os.remove(target)  # an earlier build's: not for this one
            return
        if version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


def compile_extension(source: str, target: str) -> bool:
    """Compile *source* into the shared object *target*; False (and a warning
    on stderr) when that is not possible here."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    partial = target + ".part"
    command = [
        *compiler,
        "-O2",
        "-fPIC",
        "-shared",
        "-fno-strict-aliasing",
        "-I",
        include,
        source,
        "-o",
        partial,
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, target)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        print(
            f"aioproc: building the C line iterator failed ({detail.strip()}); "
            "installing pure Python (lines() is slower, the same otherwise)",
            file=sys.stderr,
        )
        if os.path.exists(partial):
            os.remove(partial)
        return False
    return True
