"""What several test modules share: a study with known values, the CLI, the browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna

from bln_search.config import FLAG_NAMES
from bln_search.manifest import SCHEMA_VERSION, STUDY_MANIFEST
from tests.fixtures import models

FIX = str(Path(models.__file__).resolve())
BIN = Path(sys.executable).parent


def synthetic_study(values: dict) -> optuna.Study:
    """A study of complete trials with known values: {(config or baseline, batch size): [value per seed]}."""
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("metric", "val_loss")
    study.set_user_attr(
        STUDY_MANIFEST, {"schema": SCHEMA_VERSION, "metric": "val_loss", "direction": "minimize"}
    )
    distributions = {
        name: optuna.distributions.CategoricalDistribution([False, True]) for name in FLAG_NAMES
    }
    for (candidate, batch_size), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            attrs = {"seed": seed, "batch_size": batch_size, "history": [value + 0.1, value]}
            if isinstance(candidate, str):
                study.add_trial(
                    optuna.trial.create_trial(
                        value=value, user_attrs={**attrs, "baseline": candidate}
                    )
                )
            else:
                study.add_trial(
                    optuna.trial.create_trial(
                        value=value,
                        params=candidate.as_dict(),
                        distributions=distributions,
                        user_attrs=attrs,
                    )
                )
    return study


def command(*args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BLN_SEARCH_STORAGE", None)
    return subprocess.run(
        [str(BIN / "bln-search"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


# Appended to a copy of a report page: once it has loaded, it writes what a reader would see
# into <pre id="probe"> for `chromium --dump-dom` to carry back.
_PROBE = r"""
<script>
window.addEventListener("load", function () {
  var doc = document.documentElement;
  var text = document.body.innerText;
  var result = {
    errors: (document.getElementById("script-errors") || {}).textContent || "",
    figures: Array.from(document.querySelectorAll("[data-figure]")).map(function (e) {
      return e.getAttribute("data-figure") + (e.querySelector(".main-svg") ? "" : " (not drawn)");
    }),
    verdicts: Array.from(document.querySelectorAll(".verdict")).map(function (e) { return e.innerText; }),
    verdicts_first: (function () {
      var v = document.querySelector(".verdict"), f = document.querySelector("[data-figure]");
      return !!(v && f && (v.compareDocumentPosition(f) & Node.DOCUMENT_POSITION_FOLLOWING));
    })(),
    width: window.innerWidth,
    overflow: doc.scrollWidth - doc.clientWidth,
    bad: ["<NA>", "\\/"].filter(function (s) { return text.indexOf(s) >= 0; })
      .concat(/\bnan\b/i.test(text) ? ["nan"] : []),
  };
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>
"""


def probe_page(page: Path, browser: str, width: int = 1280, height: int = 800) -> dict:
    """Opens a copy of `page` in headless `browser` at width x height; what the probe saw, as a dict."""
    import html
    import json
    import re

    copy = page.with_name(page.stem + "-probe.html")
    copy.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe never ran: " + dom[-2000:]
    return json.loads(html.unescape(found.group(1)))
