package server_test

import discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

type discoveryResponse = discovery.DeltaDiscoveryResponse
