// cni-driver runs a CNI network configuration list through libcni, the library container
// runtimes (containerd, CRI-O, podman) use to call plugins, so that the end-to-end tests drive
// vswitch-cni exactly as a runtime would.
//
//	cni-driver add|check|del CONFLIST CONTAINER_ID NETNS IFNAME PLUGIN_DIR CACHE_DIR [CAPABILITY_ARGS_JSON]
//
// add prints the result as libcni parsed it; a failure prints {"code":N,"msg":...,"details":...}
// (the plugin's error as libcni reports it; code 0 when libcni itself failed) and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"code": 0, "msg": err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out = map[string]interface{}{"code": cniErr.Code, "msg": cniErr.Msg, "details": cniErr.Details}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 8 {
		fmt.Fprintln(os.Stderr, "usage: cni-driver add|check|del CONFLIST CONTAINER_ID NETNS IFNAME PLUGIN_DIR CACHE_DIR [CAPABILITY_ARGS_JSON]")
		os.Exit(2)
	}
	command, confPath, containerID, netns, ifname, pluginDir, cacheDir :=
		os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7]
	capabilityArgs := map[string]interface{}{}
	if len(os.Args) > 8 {
		if err := json.Unmarshal([]byte(os.Args[8]), &capabilityArgs); err != nil {
			fail(err)
		}
	}
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netns,
		IfName:         ifname,
		CapabilityArgs: capabilityArgs,
	}
	ctx := context.Background()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.PrintTo(os.Stdout); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown command %q", command))
	}
}
