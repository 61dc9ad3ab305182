#!/usr/bin/env bash
# Installs llama.cpp's Python bindings (llama-cpp-python, which vendors llama.cpp) into the virtual environment $1,
# built from the package index's source distribution for this CPU, and caches the built wheel per CPU feature set in
# ~/.cache/embeddinggemma/wheels (the first build took 15 minutes on 2 cores; later installs take seconds).
#
# The build is not "native": some virtual machines list AMX in /proc/cpuinfo but do not let processes use AMX tiles,
# and llama.cpp's native build then dies with "Illegal instruction" on its first int8 product. AVX2/FMA/F16C is the
# base; AVX-512 (F, VBMI, VNNI, BF16) and AVX-VNNI are added when the CPU lists them; AMX is never compiled in.
set -euo pipefail
venv=${1:?usage: install_llama_cpp.sh VENV}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
       -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
tag=avx2
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $cpu " == *" $1 "* ]]; }
if has avx512f && has avx512bw && has avx512vl; then
  flags+=(-DGGML_AVX512=ON); tag+=-avx512
  if has avx512vbmi; then flags+=(-DGGML_AVX512_VBMI=ON); tag+=-vbmi; fi
  if has avx512_vnni; then flags+=(-DGGML_AVX512_VNNI=ON); tag+=-vnni; fi
  if has avx512_bf16; then flags+=(-DGGML_AVX512_BF16=ON); tag+=-bf16; fi
fi
if has avx_vnni; then flags+=(-DGGML_AVX_VNNI=ON); tag+=-avxvnni; fi
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/embeddinggemma/wheels/llama-cpp-python-$version-$tag"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $version for $tag (about 15 minutes on 2 cores; cached in $wheels)"
  mkdir -p "$wheels.partial"
  CMAKE_ARGS="${flags[*]}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps \
    "llama-cpp-python==$version" -w "$wheels.partial" &
  build=$!
  started=$SECONDS
  next=60
  while kill -0 "$build" 2>/dev/null; do  # a line a minute, so a quiet compile is not mistaken for a hang
    sleep 5
    if (( SECONDS - started >= next )); then
      echo "  still building llama-cpp-python: $(( next / 60 )) min so far"
      next=$(( next + 60 ))
    fi
  done
  wait "$build"
  echo "built llama-cpp-python in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --find-links "$wheels" --no-index --no-deps \
  "llama-cpp-python==$version"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "diskcache>=5.6.1" "jinja2>=2.11.3"
