package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// TestClockFollowsTheDatabase: on a host whose clock runs an hour ahead,
// the store's clock still reads the database's time, so a deadline written
// by another orchestrator is not seen as due an hour early (the host's own
// clock, as the timer used before, would be).
func TestClockFollowsTheDatabase(t *testing.T) {
	pool := sagatest.Pool(t, sagatest.NewDatabase(t), "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := NewClock(pool)
	c.local = func() time.Time { return time.Now().Add(time.Hour) } // a host far ahead
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var db time.Time
	if err := pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	if d := c.Now().Sub(db); d < -time.Second || d > time.Second {
		t.Errorf("clock reads %v, the database %v: %v apart, want under a second", c.Now(), db, d)
	}
	if off := c.Offset(); off > -59*time.Minute || off < -61*time.Minute {
		t.Errorf("offset %v, want about -1h", off)
	}
	deadline := db.Add(10 * time.Minute)
	if !c.Now().Before(deadline) {
		t.Error("a deadline ten minutes ahead of the database is due by the store's clock")
	}
	if !c.local().After(deadline) {
		t.Error("test setup: the host's own clock should see that deadline as past")
	}
}
