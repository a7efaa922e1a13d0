//go:build race

package redisstore_test

// raceDetector is true in a build with the race detector, which makes the
// large-fleet test several times slower; it runs a smaller fleet then.
const raceDetector = true
