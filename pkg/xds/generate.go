package xds

import "fmt"

// Generator builds one kind of proxy's resources from the zone's state. A
// generator is a pure function of its arguments: no I/O, no clock, no
// store; what it returns shares messages with the State's memo and with
// other proxies' resources, so neither may be modified afterwards.
type Generator interface {
	Generate(s *State, p Proxy) (Resources, error)
}

// GeneratorFunc adapts a function to Generator.
type GeneratorFunc func(s *State, p Proxy) (Resources, error)

// Generate calls f.
func (f GeneratorFunc) Generate(s *State, p Proxy) (Resources, error) { return f(s, p) }

// Generators picks the generator of each kind of proxy.
type Generators map[Kind]Generator

// Generate generates p's resources with the generator of its kind.
func (g Generators) Generate(s *State, p Proxy) (Resources, error) {
	gen, ok := g[p.Kind]
	if !ok {
		return nil, fmt.Errorf("no generator for a %s proxy", p.Kind)
	}
	return gen.Generate(s, p)
}
