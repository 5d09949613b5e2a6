"""Write the classic-script form of the browser client from its ES module.

``async-request.mjs`` is the source; ``async-request.js`` is the same code
wrapped in a function that defines the global ``AsyncRequest`` instead of
exporting, so that a plain ``<script>`` tag works. Nothing is built at run time:
both files are shipped, and a test checks that the second is this function of
the first. After editing the module, regenerate with::

    python -m tests.browser.jsbuild
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "flask_async_request" / "static"
MODULE = STATIC / "async-request.mjs"
CLASSIC = STATIC / "async-request.js"

_EXPORTS = re.compile(r"^export \{([^}]*)\};\n\Z", re.MULTILINE)
#: The global's names in the first version of the client, assigned as they were then.
_FIRST_NAMES = ("start", "Job")

HEADER = """\
// The classic-script form of async-request.mjs: the same code, defining the global
// AsyncRequest. Written by `python -m tests.browser.jsbuild` from async-request.mjs;
// edit that file, not this one.
(function (root) {
  "use strict";

"""

FOOTER = """\

  root.AsyncRequest = {start: start, Job: Job};
  Object.assign(root.AsyncRequest, {%s});
})(typeof globalThis !== "undefined" ? globalThis : window);
"""


def _split(module_source: str) -> tuple[str, list[str]]:
    """The module's code before its closing ``export {...};``, and the names it exports."""
    match = _EXPORTS.search(module_source)
    if match is None:
        raise ValueError("The module must end with one `export {...};` statement.")
    body = module_source[: match.start()]
    if re.search(r"^\s*export\b", body, re.MULTILINE):
        raise ValueError("Only the module's last statement may export.")
    return body, [name.strip() for name in match.group(1).split(",") if name.strip()]


def exported_names(module_source: str) -> list[str]:
    """The names the module's closing ``export {...};`` statement exports."""
    return _split(module_source)[1]


def classic_script(module_source: str) -> str:
    """The classic script for ``module_source``: its code in a function, its exports global."""
    body, names = _split(module_source)
    missing = set(_FIRST_NAMES) - set(names)
    if missing:
        raise ValueError(f"The module must export {sorted(missing)}.")
    indented = "\n".join(f"  {line}" if line else "" for line in body.rstrip("\n").split("\n"))
    rest = ", ".join(f"{name}: {name}" for name in names if name not in _FIRST_NAMES)
    return HEADER + indented + "\n" + FOOTER % rest


def main() -> int:
    CLASSIC.write_text(classic_script(MODULE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {CLASSIC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
