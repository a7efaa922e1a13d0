package redisstore

import "github.com/redis/rueidis"

// WrapClient replaces the client s sends its commands through with what wrap
// makes of it, for tests that watch a Store's round trips.
func WrapClient(s *Store, wrap func(rueidis.Client) rueidis.Client) { s.client = wrap(s.client) }

// DispatchBatch and DispatchPipeline are how many tasks a fan-out script
// writes at most, and how many scripts go out in one round trip.
const (
	DispatchBatch    = dispatchBatch
	DispatchPipeline = dispatchPipeline
)

// DispatchInFlight is how many fan-out round trips s keeps outstanding at most.
func DispatchInFlight(s *Store) int { return s.inFlight() }
