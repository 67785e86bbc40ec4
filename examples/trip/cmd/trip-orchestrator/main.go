// Command trip-orchestrator drives the trip saga and serves its REST API:
//
//	POST /trips               book a trip (body: trip.Request; Idempotency-Key honoured)
//	GET  /trips/{id}          where a trip stands
//	POST /trips/{id}/checkin  the traveller checked in (the trip's last step waits for it)
//
// and /healthz, /readyz; /metrics and the profiler are on its admin
// listener (ADMIN_ADDR). Configuration: the environment, as for
// every sagaflow orchestrator, and CHECKIN_TIMEOUT (trip-orchestrator
// -help lists it).
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/examples/trip"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/service"
)

// config is what every orchestrator reads, and how long a trip waits for
// its check-in.
type config struct {
	service.OrchestratorConfig
	CheckInTimeout time.Duration `env:"CHECKIN_TIMEOUT" envDefault:"720h" help:"how long a confirmed trip waits for the check-in before it is stuck"`
}

// Validate reports every problem at once.
func (c *config) Validate() []error {
	errs := c.OrchestratorConfig.Validate()
	if c.CheckInTimeout <= 0 {
		errs = append(errs, fmt.Errorf("CHECKIN_TIMEOUT: want a positive duration, got %s", c.CheckInTimeout))
	}
	return errs
}

func main() {
	cfg := &config{OrchestratorConfig: service.OrchestratorConfig{Base: service.Base{DBMaxConns: 8}}}
	os.Exit(service.RunOrchestrator(service.OrchestratorSpec{
		Name:    "trip-orchestrator",
		Summary: "the trip example's saga coordinator and REST API",
		Schema:  "trips",
		Config:  cfg,
		Definitions: func() []*saga.Definition {
			return []*saga.Definition{trip.Definition(cfg.Retry(), cfg.CheckInTimeout)}
		},
		Topology:    trip.Topology,
		WatchQueues: []string{trip.HotelQueue, trip.FlightQueue, trip.CarQueue},
		Handler: func(o *service.Orchestrator) (http.Handler, error) {
			a := &api{o: o}
			mux := o.Health()
			mux.HandleFunc("POST /trips", a.book)
			mux.HandleFunc("GET /trips/{id}", a.get)
			mux.HandleFunc("POST /trips/{id}/checkin", a.checkIn)
			return mux, nil
		},
	}))
}

type api struct{ o *service.Orchestrator }

// View is a trip as the API shows it.
type View struct {
	TripID string `json:"trip_id"`
	// State is "pending", a step's state ("booking_flight",
	// "awaiting_checkin"), "compensating", "completed", "rejected",
	// "cancelled" or "stuck".
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// StuckReason says why a stuck trip waits for an operator.
	StuckReason string            `json:"stuck_reason,omitempty"`
	Refs        map[string]string `json:"refs"`
	Steps       []saga.StepRecord `json:"steps"`
}

func view(in saga.Instance) View {
	v := View{TripID: in.ID.String(), State: in.State, Reason: in.Reason, StuckReason: in.StuckReason, Refs: map[string]string{}, Steps: in.History}
	var data map[string]any
	_ = json.Unmarshal(in.Data, &data)
	for _, k := range []string{"hotel_ref", "flight_ref", "car_ref"} {
		if s, ok := data[k].(string); ok {
			v.Refs[k] = s
		}
	}
	if v.Steps == nil {
		v.Steps = []saga.StepRecord{}
	}
	return v
}

func (a *api) book(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		fail(w, http.StatusRequestEntityTooLarge, "too_large", "the body is over 64 KiB")
		return
	}
	var req trip.Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "invalid_request", "the body is not a trip: "+err.Error())
		return
	}
	if err := req.Validate(); err != nil {
		fail(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	data, err := json.Marshal(req)
	if err != nil {
		fail(w, http.StatusInternalServerError, "internal", "the trip could not be encoded")
		return
	}
	sum := sha256.Sum256(data)
	in, created, err := a.o.Coordinator.Submit(r.Context(), coordinator.Submission{
		Definition: trip.SagaName, ID: uuid.Must(uuid.NewV7()), Data: data,
		Key: r.Header.Get("Idempotency-Key"), Fingerprint: hex.EncodeToString(sum[:]),
	})
	switch {
	case errors.Is(err, saga.ErrKeyReused):
		fail(w, http.StatusUnprocessableEntity, "idempotency_key_reused", "this Idempotency-Key was used for another trip")
		return
	case err != nil:
		a.o.Log.Error().Err(err).Msg("submit trip")
		fail(w, http.StatusServiceUnavailable, "unavailable", "the trip could not be accepted; try again")
		return
	}
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	}
	reply(w, status, view(in))
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		fail(w, http.StatusBadRequest, "invalid_request", "the trip id is not a UUID")
		return
	}
	in, err := a.o.Store.Get(r.Context(), id)
	switch {
	case errors.Is(err, saga.ErrNotFound) || (err == nil && in.Definition != trip.SagaName):
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no trip %s", id))
		return
	case err != nil:
		a.o.Log.Error().Err(err).Msg("get trip")
		fail(w, http.StatusServiceUnavailable, "unavailable", "the trip could not be read; try again")
		return
	}
	reply(w, http.StatusOK, view(in))
}

// checkIn hands the trip its check-in: 202 with where it stands (one that
// comes before the trip waits is kept; the same again changes nothing),
// 404 for no such trip, 409 for a trip that will never wait for one (it
// was refused or cancelled). A trip stuck for want of its check-in takes
// it and completes.
func (a *api) checkIn(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		fail(w, http.StatusBadRequest, "invalid_request", "the trip id is not a UUID")
		return
	}
	at, _ := json.Marshal(map[string]time.Time{"checked_in_at": time.Now().UTC()})
	// One check-in per trip: its key is the trip's.
	in, err := a.o.Coordinator.Signal(r.Context(), id, saga.Signal{Name: trip.CheckedIn, Key: "checkin:" + id.String(), Payload: at})
	switch {
	case errors.Is(err, saga.ErrNotFound):
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no trip %s", id))
		return
	case errors.Is(err, saga.ErrNotWaiting):
		fail(w, http.StatusConflict, "not_waiting", "this trip does not wait for a check-in: "+err.Error())
		return
	case err != nil:
		a.o.Log.Error().Err(err).Msg("check in")
		fail(w, http.StatusServiceUnavailable, "unavailable", "the check-in could not be recorded; try again")
		return
	}
	reply(w, http.StatusAccepted, map[string]string{"trip_id": id.String(), "state": in.State})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, message string) {
	reply(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}
