package stream

// rapid drives the property tests of the engine's parts against
// brute-force oracles; this import keeps it required while they land.
import _ "pgregory.net/rapid"
