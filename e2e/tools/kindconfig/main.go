// Command kindconfig loads a kind cluster config with kind's own loader and validation, the
// code `kind create cluster --config` runs before it touches Docker: encoding.Load (strict YAML
// decoding of kind.x-k8s.io/v1alpha4, defaults, conversion) then Config.Validate (node roles,
// images, port mappings, subnets, at least one control-plane node). Exit 0 with one JSON line
// describing the cluster kind understood (name, nodes with role, image and port mappings, the
// default node image of this kind release); exit 1 with kind's message on stderr.
//
// Those packages are internal to kind (sigs.k8s.io/kind/pkg/internal/...). Go allows an
// internal import from any package whose path lies under the internal directory's parent, so
// this module is named under sigs.k8s.io/kind/pkg/ on purpose: it is ours, not kind's. Built and
// cached by version by e2e/localcluster/build.py; used by tests/unit/test_kind.py.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/defaults"
	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

type portMapping struct {
	ContainerPort int32  `json:"containerPort"`
	HostPort      int32  `json:"hostPort"`
	ListenAddress string `json:"listenAddress"`
	Protocol      string `json:"protocol"`
}

type node struct {
	Role              string            `json:"role"`
	Image             string            `json:"image"`
	Labels            map[string]string `json:"labels"`
	ExtraPortMappings []portMapping     `json:"extraPortMappings"`
}

type summary struct {
	Name         string `json:"name"`
	DefaultImage string `json:"defaultImage"`
	Nodes        []node `json:"nodes"`
}

func main() {
	name := flag.String("name", "", "the cluster name, as `kind create cluster --name` overrides the config's")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kindconfig [--name NAME] CONFIG.yaml")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	path := flag.Arg(0)
	cfg, err := encoding.Load(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	if *name != "" {
		cfg.Name = *name
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	out := summary{Name: cfg.Name, DefaultImage: defaults.Image, Nodes: []node{}}
	for _, n := range cfg.Nodes {
		mappings := []portMapping{}
		for _, m := range n.ExtraPortMappings {
			mappings = append(mappings, portMapping{m.ContainerPort, m.HostPort, m.ListenAddress, string(m.Protocol)})
		}
		out.Nodes = append(out.Nodes, node{string(n.Role), n.Image, n.Labels, mappings})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
