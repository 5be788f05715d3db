# Sourced by the SLURM and SSH test beds: "machines" as network namespaces
# joined to a bridge in the root namespace, each with its own address.

bridge_up() {  # bridge, network (first three octets): the bridge takes .1
    ip link show "$1" >/dev/null 2>&1 || ip link add "$1" type bridge
    ip addr replace "$2.1/24" dev "$1"
    ip link set "$1" up
}

machine_up() {  # namespace, its veth's name on the bridge, bridge, address
    ip netns list | grep -qw "$1" || ip netns add "$1"
    if ! ip link show "$2" >/dev/null 2>&1; then
        ip link add "$2" type veth peer name eth0 netns "$1"
    fi
    ip link set "$2" master "$3" up
    ip -n "$1" addr replace "$4/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}

machine_down() {  # namespace, its veth's name
    ip netns del "$1" 2>/dev/null || true
    ip link del "$2" 2>/dev/null || true
}
