# Source on the GPU machine from the repo root: makes `tokenweight.*` importable without an
# install (the image has no network) and adds the carried wheels (.whl) for the web stack.
shim=/tmp/tokenweight-shim
rm -rf "$shim" && mkdir -p "$shim"
cp -r tokenweight "$shim/"
for pkg in service client trainer; do ln -s "$PWD/$pkg" "$shim/tokenweight/$pkg"; done
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$shim:/tmp/site"
else
  export PYTHONPATH="$shim"
fi
export PYTHONUNBUFFERED=1
