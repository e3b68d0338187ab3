#!/usr/bin/env bash
# Builds the e2e Kubernetes tooling from Go modules (needs only Go >= 1.25 and
# the Go module proxy):
#   e2e/bin/kube-lab  kube-apiserver (k8s.io/kubernetes) + embedded etcd
#   e2e/bin/kubectl   k8s.io/kubernetes/cmd/kubectl, same version
#   e2e/bin/helm      helm.sh/helm/v3/cmd/helm, on the same k8s libraries
#   e2e/bin/flanneld  flannel's daemon cut to the kube subnet manager + vxlan backend
#                     (flanneld/main.go, its own go.mod: see flanneld/README.md)
#   e2e/bin/kube-controller-manager, kube-scheduler, kubelet  the same k8s.io/kubernetes
#                     version, and pause (pause/main.go, the sandbox image's process), for the
#                     real-node tier (e2e/node/); not built by default (target node = these four)
# Versions are pinned by go.mod/go.sum beside this script (flanneld: flanneld/go.mod/go.sum;
# flannel needs Go >= 1.26). A binary is rebuilt
# only when it is older than a source (*.go, go.mod, go.sum, this script);
# FORCE=1 rebuilds all. Usage: e2e/apiserver/build.sh [kube-lab|kubectl|helm|flanneld|node|
#   kube-controller-manager|kube-scheduler|kubelet|pause]...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "$here/.." && pwd)/bin"
cd "$here"
mkdir -p "$bin"

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }
gov="$(go env GOVERSION)"; gov="${gov#go}"
if ! printf '%s\n' "1.25" "$gov" | sort -V -C; then
  echo "build.sh: Go >= 1.25 needed, have $gov" >&2; exit 1
fi

export CGO_ENABLED=0   # static binaries, no C toolchain needed
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(kube-lab kubectl helm flanneld)
node_targets=(kube-controller-manager kube-scheduler kubelet pause)
expanded=()
for t in "${targets[@]}"; do
  if [ "$t" = node ]; then expanded+=("${node_targets[@]}"); else expanded+=("$t"); fi
done
targets=("${expanded[@]}")

stale() { # stale BINARY: missing, forced, or older than a source
  local b="$bin/$1" s sources=(*.go go.mod go.sum build.sh)
  [ "$1" = pause ] && sources=(pause/*.go build.sh)
  [ "$1" = flanneld ] && sources=(flanneld/*.go flanneld/go.mod flanneld/go.sum build.sh)
  [ "${FORCE:-0}" = 1 ] && return 0
  [ -x "$b" ] || return 0
  for s in "${sources[@]}"; do [ "$s" -nt "$b" ] && return 0; done
  return 1
}

todo=()
for t in "${targets[@]}"; do
  case "$t" in kube-lab|kubectl|helm|flanneld|kube-controller-manager|kube-scheduler|kubelet|pause) ;; *) echo "build.sh: unknown target $t" >&2; exit 2;; esac
  if stale "$t"; then todo+=("$t"); else echo "build.sh: $t up to date"; fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t0="$(now)"
# Version stamps, as the upstream Makefiles set them (from the pinned modules).
k8s_ver="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_date="$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
helm_ver="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
minor="${k8s_ver#v1.}"; minor="${minor%%.*}"
k8s_ld="-X k8s.io/component-base/version.gitVersion=$k8s_ver -X k8s.io/client-go/pkg/version.gitVersion=$k8s_ver"
k8s_ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMajor=1"
k8s_ld+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitMinor=$minor"
k8s_ld+=" -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitTreeState=clean"
if [ -n "$k8s_date" ]; then
  k8s_ld+=" -X k8s.io/component-base/version.buildDate=$k8s_date -X k8s.io/client-go/pkg/version.buildDate=$k8s_date"
fi
helm_ld="-X helm.sh/helm/v3/internal/version.version=$helm_ver -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
helm_ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
helm_ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
flannel_ver="$(cd flanneld && go list -m -f '{{.Version}}' github.com/flannel-io/flannel)"
flannel_ld="-X main.version=$flannel_ver"
echo "build.sh: resolved modules (k8s $k8s_ver, helm $helm_ver, flannel $flannel_ver) in $(since "$t0")s"

for t in "${todo[@]}"; do
  case "$t" in
    kube-lab) pkg=.;                             ld="$k8s_ld" ;;
    kubectl)  pkg=k8s.io/kubernetes/cmd/kubectl; ld="$k8s_ld" ;;
    kube-controller-manager|kube-scheduler|kubelet) pkg="k8s.io/kubernetes/cmd/$t"; ld="$k8s_ld" ;;
    helm)     pkg=helm.sh/helm/v3/cmd/helm;      ld="$helm_ld" ;;
    pause)    pkg=./pause;                       ld="" ;;
    # Its own module (flannel needs go 1.26 and newer shared dependencies than kube-lab's).
    flanneld) pkg=flanneld;                      ld="$flannel_ld" ;;
  esac
  s="$(now)"
  # Build to a temp name, then rename: a concurrent reader never sees half a binary.
  tmp="$bin/.$t.$$.tmp"
  trap 'rm -f "$tmp"' EXIT
  if [ "$t" = flanneld ]; then
    if ! printf '%s\n' "1.26" "$gov" | sort -V -C; then
      echo "build.sh: flanneld needs Go >= 1.26, have $gov" >&2; exit 1
    fi
    (cd flanneld && go build -trimpath -buildvcs=false -ldflags "-s -w $ld" -o "$tmp" .)
  else
    go build -trimpath -buildvcs=false -ldflags "-s -w $ld" -o "$tmp" "$pkg"
  fi
  mv -f "$tmp" "$bin/$t"
  echo "build.sh: built $t in $(since "$s")s ($(( $(stat -c %s "$bin/$t") / 1048576 )) MiB)"
done
echo "build.sh: total $(since "$t0")s"
