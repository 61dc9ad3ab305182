"""Fetches transformers' own common model tests (tests/test_modeling_common.py and what it imports) from the source
release of the installed transformers on the package index, into .cache/transformers-tests/<version>/, where
tests/test_transformers_common.py finds them. Idempotent; run by setup.sh; not fatal when offline.

    python scripts/fetch_transformers_tests.py
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")  # tests/__init__.py is made empty
ROOT = Path(__file__).resolve().parent.parent / ".cache" / "transformers-tests"


def main() -> int:
    version = transformers.__version__
    target = ROOT / version
    if all((target / name).is_file() for name in FILES):
        print(f"transformers {version}'s common tests: {target} (already there)")
        return 0
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        result = subprocess.run([*command, f"transformers=={version}", "-d", download], capture_output=True, text=True)
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            print(f"warning: could not download transformers {version}'s source release: {result.stderr[-500:]}")
            return 1
        ROOT.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=ROOT))
        try:
            with tarfile.open(archives[0]) as archive:
                for name in FILES:  # read by name: nothing else of the archive is extracted
                    data = archive.extractfile(f"transformers-{version}/{name}").read()
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    (staging / name).write_bytes(data)
            (staging / "tests" / "__init__.py").write_text("")
            staging.rename(target)  # complete or absent
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    print(f"transformers {version}'s common tests: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
