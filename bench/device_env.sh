# Source on the GPU machine from the repo root: makes `tokenweight.*` and `bench` importable
# from the source tree without an install (the image has no network) and adds the carried
# wheels (.whl) for the web stack. pyproject maps service/, client/ and trainer/ into the
# `tokenweight` namespace; links inside tokenweight/ (git-ignored) do the same here, so the
# repo root is the whole namespace both as the working directory (`python3 -m pytest`,
# `python3 -m bench.NAME`) and on PYTHONPATH (`python3 -P ...`).
for pkg in service client trainer; do ln -sfn "../$pkg" "tokenweight/$pkg"; done
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
