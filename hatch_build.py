"""Build hook: compile aioproc's C modules in place.

- ``aioproc/_lineiter.c`` speeds up ``OutputStream.lines()``;
- ``aioproc/_runcore.c`` makes the system calls of a ``run()`` (Linux, glibc
  2.34 or newer).

Each only makes something faster. Without one (no C compiler, a compiler
error, another C library) aioproc uses its Python code for that part, with the
same behaviour. So a failure here is a warning, never a failed install.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: Module name -> what it speeds up (for the warning when it cannot be built).
MODULES = {
    "_lineiter": "lines() is slower",
    "_runcore": "run() takes a little longer to start and reap a child",
}


class CustomBuildHook(BuildHookInterface):
    """Compiles each module next to its source (found there by editable installs
    and shipped in wheels through ``artifacts``)."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        built = False
        for name, without in MODULES.items():
            source = os.path.join(self.root, "aioproc", name + ".c")
            target = os.path.join(self.root, "aioproc", name + suffix)
            # AIOPROC_NO_C=1 installs pure Python on purpose.
            if os.environ.get("AIOPROC_NO_C") or not compile_extension(source, target, without):
                if os.path.exists(target):
                    os.remove(target)  # an earlier build's: not for this one
                continue
            built = True
        if built and version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


def compile_extension(source: str, target: str, without: str) -> bool:
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
            f"aioproc: building {os.path.basename(source)} failed ({detail.strip()}); "
            f"using Python instead ({without}, the same otherwise)",
            file=sys.stderr,
        )
        if os.path.exists(partial):
            os.remove(partial)
        return False
    return True
