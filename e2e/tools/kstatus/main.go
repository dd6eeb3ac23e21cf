// Command kstatus prints kstatus's own verdict on Kubernetes objects: for each object read
// from stdin (JSON; one object, a JSON list, a kind: List, or several concatenated values),
// one JSON line {"name", "status", "message"} from sigs.k8s.io/cli-utils' status.Compute,
// the computation Flux, kpt and `kubectl wait`-style tools use. Built and cached by version
// by e2e/localcluster/build.py; used by tests/unit/test_gitops.py.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// objects flattens one decoded value: a JSON list, a kind: List, or a single object.
func objects(raw json.RawMessage) ([]map[string]interface{}, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err == nil {
		var out []map[string]interface{}
		for _, item := range list {
			more, err := objects(item)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
		}
		return out, nil
	}
	var obj map[string]interface{}
	// utiljson keeps integers as int64: kstatus reads generations with NestedInt64.
	if err := utiljson.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	if items, ok := obj["items"].([]interface{}); ok && obj["kind"] == "List" {
		var out []map[string]interface{}
		for _, item := range items {
			if m, ok := item.(map[string]interface{}); ok {
				out = append(out, m)
			}
		}
		return out, nil
	}
	return []map[string]interface{}{obj}, nil
}

func run(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		objs, err := objects(raw)
		if err != nil {
			return fmt.Errorf("decoding an object: %w", err)
		}
		for _, obj := range objs {
			u := &unstructured.Unstructured{Object: obj}
			res, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("%s: %w", u.GetName(), err)
			}
			if err := enc.Encode(verdict{u.GetName(), res.Status.String(), res.Message}); err != nil {
				return err
			}
		}
	}
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
