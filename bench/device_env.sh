# Source on the GPU machine from the repo root: makes `tokenweight.*` importable without an
# install (the image has no network) and adds the carried wheels (.whl) for the web stack.
# PYTHONSAFEPATH: `python3 -m pytest` / `python3 -m bench.X` would otherwise put the repo root
# first on sys.path, where the bare tokenweight/ (no service, client, trainer) shadows the shim;
# `bench` is linked into the shim instead so `python3 -m bench.X` still finds it.
shim=/tmp/tokenweight-shim
rm -rf "$shim" && mkdir -p "$shim"
cp -r tokenweight "$shim/"
for pkg in service client trainer; do ln -s "$PWD/$pkg" "$shim/tokenweight/$pkg"; done
ln -s "$PWD/bench" "$shim/bench"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$shim:/tmp/site"
else
  export PYTHONPATH="$shim"
fi
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
