package redisstore

import "github.com/redis/rueidis"

// WrapClient replaces the client s sends its commands through with what wrap
// makes of it, for tests that watch a Store's round trips.
func WrapClient(s *Store, wrap func(rueidis.Client) rueidis.Client) { s.client = wrap(s.client) }

// DispatchBatch is how many tasks a fan-out script writes at most.
const DispatchBatch = dispatchBatch

// DispatchInFlight is how many fan-out scripts s keeps outstanding at most.
func DispatchInFlight(s *Store) int { return s.inFlight() }
