#!/usr/bin/env bash
# End-to-end check of the e2e Kubernetes tooling: builds (if stale) kube-lab,
# kubectl and helm, starts a kube-lab in a temp dir, exercises it, stops it.
# Prints one line per check and "N passed, N failed"; exit 1 on any failure.
# KEEP=1 keeps the temp dir (logs) for inspection.
#
#   e2e/apiserver/verify.sh
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "$here/.." && pwd)/bin"
"$here/build.sh" || exit 1

dir="$(mktemp -d "${TMPDIR:-/tmp}/kube-lab-verify.XXXXXX")"
export HELM_CACHE_HOME="$dir/helm/cache" HELM_CONFIG_HOME="$dir/helm/config" HELM_DATA_HOME="$dir/helm/data"
cleanup() {
  "$here/stop.sh" "$dir/lab" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

passed=0 failed=0
check() { # check NAME COMMAND...: runs COMMAND, output in $dir/out
  local name="$1"; shift
  if "$@" > "$dir/out" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     | /' "$dir/out" | tail -n 15
  fi
}
has() { grep -q -- "$1" "$dir/out"; }

t0=$(date +%s%N)
kubeconfig="$("$here/start.sh" "$dir/lab" 2> "$dir/start.err")" || { cat "$dir/start.err"; exit 1; }
ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
K=("$bin/kubectl" --kubeconfig "$kubeconfig")
H=("$bin/helm" --kubeconfig "$kubeconfig")
T="$here/testdata"

check "kubectl version matches the server" bash -c '"$@" version | tee /dev/stderr | grep -q "Server Version: v1" ' _ "${K[@]}"
check "create namespace" "${K[@]}" create namespace t1
check "apply NetworkPolicy and Pod" "${K[@]}" apply -f "$T/smoke.yaml"
check "pod stays Pending (no scheduler)" bash -c '[ "$("$@" -n t1 get pod web -o jsonpath={.status.phase})" = Pending ]' _ "${K[@]}"
check "patch pod status (subresource)" "${K[@]}" -n t1 patch pod web --subresource=status --type=merge \
  -p '{"status":{"phase":"Running","podIP":"10.244.0.5","podIPs":[{"ip":"10.244.0.5"}]}}'
check "pod status persisted" bash -c '[ "$("$@" -n t1 get pod web -o jsonpath={.status.phase}/{.status.podIP})" = Running/10.244.0.5 ]' _ "${K[@]}"
check "/apis lists networking.k8s.io/v1" bash -c '"$@" get --raw /apis | grep -q "\"networking.k8s.io/v1\""' _ "${K[@]}"
check "NetworkPolicy readable" bash -c '"$@" -n t1 get networkpolicy web-ingress -o jsonpath={.spec.ingress[0].ports[0].port} | grep -qx 80' _ "${K[@]}"
check "apply CRD" "${K[@]}" apply -f "$T/crd.yaml"
check "CRD becomes Established" "${K[@]}" wait --for condition=established --timeout=60s crd/widgets.example.com
check "create a custom resource" bash -c 'printf "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: t1}\nspec: {size: 3}\n" | "$@" apply -f -' _ "${K[@]}"

# RBAC as a limited identity (client cert user + group), then as a ServiceAccount.
check "kube-lab kubeconfig for a user" "$bin/kube-lab" kubeconfig --dir "$dir/lab" --user policyc-agent --group policyc:agents
A=("$bin/kubectl" --kubeconfig "$dir/lab/kubeconfig-policyc-agent")
check "user is who the cert says" bash -c '"$@" auth whoami -o jsonpath="{.status.userInfo.username} {.status.userInfo.groups}" | grep -q "policyc-agent.*policyc:agents"' _ "${A[@]}"
check "user is denied before RBAC" bash -c '! "$@" -n t1 get networkpolicies' _ "${A[@]}"
check "grant read via ClusterRole" bash -c '"$@" create clusterrole np-reader --verb=get,list,watch --resource=networkpolicies,pods,namespaces &&
  "$@" create clusterrolebinding np-reader --clusterrole=np-reader --group=policyc:agents' _ "${K[@]}"
check "user can list networkpolicies" "${A[@]}" -n t1 get networkpolicies
check "user still cannot delete pods" bash -c '! "$@" -n t1 delete pod web' _ "${A[@]}"
server="$("${K[@]}" config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
check "ServiceAccount token (TokenRequest)" bash -c '"$@" -n t1 create serviceaccount agent && tok="$("$@" -n t1 create token agent)" &&
  "$1" --kubeconfig /dev/null --server "'"$server"'" --certificate-authority "'"$dir/lab/ca.crt"'" --token "$tok" auth whoami |
  grep -q system:serviceaccount:t1:agent' _ "${K[@]}"

check "helm version" bash -c '"$1" version | grep -q "Version:\"v3"' _ "$bin/helm"
check "helm template" bash -c '"$@" template r1 "'"$T"'/chart" | grep -q "name: r1-np"' _ "${H[@]}"
check "helm install" "${H[@]}" install r1 "$T/chart" -n t1 --wait --timeout 60s
check "helm saw the server's capabilities" bash -c '"$@" -n t1 get cm r1-cm -o jsonpath="{.data.kubeVersion}/{.data.hasNetworkPolicy}" | grep -q "^v1\.[0-9.]*/true$"' _ "${K[@]}"
check "helm upgrade" "${H[@]}" upgrade r1 "$T/chart" -n t1 --set app=api
check "helm uninstall" bash -c '"$@" uninstall r1 -n t1 && ! "$@" status r1 -n t1' _ "${H[@]}"

pid="$(cat "$dir/lab/kube-lab.pid")"
rss_kb="$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
hwm_kb="$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")"
t1=$(date +%s%N)
check "clean shutdown" "$here/stop.sh" "$dir/lab"
stop_ms=$(( ($(date +%s%N) - t1) / 1000000 ))
check "shutdown logged" grep -q "kube-lab: etcd stopped" "$dir/lab/kube-lab.log"

echo "start-to-ready ${ready_ms} ms (start.sh), stop ${stop_ms} ms, RSS $((rss_kb / 1024)) MiB (peak $((hwm_kb / 1024)) MiB)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
