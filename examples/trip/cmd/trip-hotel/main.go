// Command trip-hotel is the trip example's hotel worker: it books and cancels
// hotel bookings (package booking). Configuration: the environment, as for
// every sagaflow worker (trip-hotel -help lists it).
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/examples/trip"
	"github.com/sagaflow/sagaflow/examples/trip/booking"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:        "hotel",
		Summary:     "the trip example's hotel worker: hotel bookings",
		Queue:       trip.HotelQueue,
		MetricsAddr: ":9201",
		Topology:    trip.Topology,
		Migrations:  []pgmigrate.Set{booking.Migrations},
		IDName:      trip.IDName,
		Register:    booking.Hotel.Register,
		DBConns:     4,
	}))
}
