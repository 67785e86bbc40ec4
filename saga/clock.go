package saga

import "time"

// Clock is the time source of the coordinator. Tests use a simulated clock
// (sagatest.Clock) to move deadlines without sleeping.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns the current time in UTC.
func (SystemClock) Now() time.Time { return time.Now().UTC() }

// After waits on the real clock.
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
