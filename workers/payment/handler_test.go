package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/workertest"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/payment/migrations"
)

// newDB creates a fresh database with the payment schema.
func newDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := workertest.DB(t, "payment", migrations.Set)
	return pool
}

// The handler test kit, under the names these tests use.
var (
	command      = workertest.Command
	inTx         = workertest.InTx
	run          = workertest.Run
	okVerdict    = workertest.OK
	failed       = workertest.Failed
	checkVerdict = workertest.CheckVerdict
)

type verdict = workertest.Verdict

func payloadOf[T any](t *testing.T, res worker.Result) T { return workertest.Payload[T](t, res) }

// --- payment helpers ---

func doCharge(t *testing.T, pool *pgxpool.Pool, orderID string, amount int64, token string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.PaymentCharge, contract.ChargeRequest{
		OrderID: orderID, CustomerID: "c1", AmountCents: amount, PaymentToken: token,
	})
}

func doRefund(t *testing.T, pool *pgxpool.Pool, orderID string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.PaymentRefund, contract.OrderRef{OrderID: orderID})
}

func checkLedger(t *testing.T, pool *pgxpool.Pool, orderID string, want contract.PaymentLedgerReply) {
	t.Helper()
	res, err := ledger(context.Background(), pool, command(t, contract.PaymentLedger, contract.OrderRef{OrderID: orderID}))
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	checkVerdict(t, "ledger", res, okVerdict)
	if diff := cmp.Diff(want, payloadOf[contract.PaymentLedgerReply](t, res)); diff != "" {
		t.Errorf("ledger of %s (-want +got):\n%s", orderID, diff)
	}
}

type paymentRow struct {
	Status           string
	Charged, Refunds int64
	DeclineCode      string
}

// payments returns every payment row by order id.
func payments(t *testing.T, pool *pgxpool.Pool) map[string]paymentRow {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT order_id, status, charged_cents, refunded_cents, decline_code FROM payments`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]paymentRow{}
	for rows.Next() {
		var id string
		var p paymentRow
		if err := rows.Scan(&id, &p.Status, &p.Charged, &p.Refunds, &p.DeclineCode); err != nil {
			t.Fatal(err)
		}
		out[id] = p
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkPayments(t *testing.T, pool *pgxpool.Pool, want map[string]paymentRow) {
	t.Helper()
	if diff := cmp.Diff(want, payments(t, pool)); diff != "" {
		t.Errorf("payments (-want +got):\n%s", diff)
	}
}

// --- tests ---

func TestChargeRecordsChargedAmount(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	res := doCharge(t, pool, "o1", 1234, "tok_visa")

	checkVerdict(t, "charge", res, okVerdict)
	reply := payloadOf[contract.ChargeReply](t, res)
	if reply.ChargedCents != 1234 {
		t.Errorf("charged_cents = %d, want 1234", reply.ChargedCents)
	}
	if !strings.HasPrefix(reply.PaymentID, "pay_") || len(reply.PaymentID) <= len("pay_") {
		t.Errorf("payment_id = %q, want pay_<id>", reply.PaymentID)
	}
	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{ChargedCents: 1234})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "charged", Charged: 1234}})
}

func TestChargeDeclinedChargesNothing(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	checkVerdict(t, "charge", doCharge(t, pool, "o1", 1234, contract.DeclineToken), failed(contract.CodeCardDeclined))
	// A re-sent charge is declined again, without charging.
	checkVerdict(t, "re-sent charge", doCharge(t, pool, "o1", 1234, contract.DeclineToken), failed(contract.CodeCardDeclined))

	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "declined", DeclineCode: contract.CodeCardDeclined}})
}

func TestChargeIsIdempotentPerOrder(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	first := doCharge(t, pool, "o1", 1234, "tok_visa")
	// Re-sent commands (new message ids) for the same order, even with a
	// different amount, charge nothing more and answer as the first did.
	second := doCharge(t, pool, "o1", 1234, "tok_visa")
	third := doCharge(t, pool, "o1", 9999, "tok_visa")

	checkVerdict(t, "first charge", first, okVerdict)
	for _, got := range []worker.Result{second, third} {
		if diff := cmp.Diff(first, got); diff != "" {
			t.Errorf("repeated charge (-first +got):\n%s", diff)
		}
	}
	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{ChargedCents: 1234})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "charged", Charged: 1234}})
}

func TestRefundRefundsChargedAmountOnce(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "charge", doCharge(t, pool, "o1", 1234, "tok_visa"), okVerdict)

	for _, what := range []string{"refund", "repeated refund"} {
		res := doRefund(t, pool, "o1")
		checkVerdict(t, what, res, okVerdict)
		if diff := cmp.Diff(contract.RefundReply{RefundedCents: 1234}, payloadOf[contract.RefundReply](t, res)); diff != "" {
			t.Errorf("%s reply (-want +got):\n%s", what, diff)
		}
	}
	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{ChargedCents: 1234, RefundedCents: 1234})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "refunded", Charged: 1234, Refunds: 1234}})
}

// A refund that overtakes its charge wins: the late charge is a no-op.
func TestRefundBeforeChargeMakesLateChargeFail(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	res := doRefund(t, pool, "o1")
	checkVerdict(t, "early refund", res, okVerdict)
	if diff := cmp.Diff(contract.RefundReply{}, payloadOf[contract.RefundReply](t, res)); diff != "" {
		t.Errorf("early refund reply (-want +got):\n%s", diff)
	}

	checkVerdict(t, "late charge", doCharge(t, pool, "o1", 1234, "tok_visa"), failed(contract.CodeAlreadyRefunded))
	checkVerdict(t, "re-sent late charge", doCharge(t, pool, "o1", 1234, "tok_visa"), failed(contract.CodeAlreadyRefunded))

	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "refunded"}})
}

func TestRefundOfDeclinedPaymentRefundsNothing(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "charge", doCharge(t, pool, "o1", 1234, contract.DeclineToken), failed(contract.CodeCardDeclined))

	res := doRefund(t, pool, "o1")
	checkVerdict(t, "refund", res, okVerdict)
	if diff := cmp.Diff(contract.RefundReply{}, payloadOf[contract.RefundReply](t, res)); diff != "" {
		t.Errorf("refund reply (-want +got):\n%s", diff)
	}
	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{})
	checkPayments(t, pool, map[string]paymentRow{"o1": {Status: "declined", DeclineCode: contract.CodeCardDeclined}})
}

func TestLedgerOfUnknownOrderIsZero(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "charge other order", doCharge(t, pool, "other", 500, "tok_visa"), okVerdict)

	checkLedger(t, pool, "o1", contract.PaymentLedgerReply{})
	checkLedger(t, pool, "other", contract.PaymentLedgerReply{ChargedCents: 500})
}

func TestInvalidPayloadsAreRejected(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	inTxCall := func(h worker.BatchHandlerFunc) func(context.Context, worker.Command) (worker.Result, error) {
		return func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return inTx(ctx, pool, h, cmd) }
	}
	ledgerCall := func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return ledger(ctx, pool, cmd) }
	tests := []struct {
		name    string
		typ     string
		call    func(context.Context, worker.Command) (worker.Result, error)
		payload string
	}{
		{"charge negative amount", contract.PaymentCharge, inTxCall(handle), `{"order_id":"o1","amount_cents":-5,"payment_token":"tok_visa"}`},
		{"charge missing token", contract.PaymentCharge, inTxCall(handle), `{"order_id":"o1","customer_id":"c1","amount_cents":100}`},
		{"charge missing order_id", contract.PaymentCharge, inTxCall(handle), `{"amount_cents":100,"payment_token":"tok_visa"}`},
		{"charge unknown field", contract.PaymentCharge, inTxCall(handle), `{"order_id":"o1","amount_cents":100,"payment_token":"tok_visa","currency":"EUR"}`},
		{"charge amount as string", contract.PaymentCharge, inTxCall(handle), `{"order_id":"o1","amount_cents":"100","payment_token":"tok_visa"}`},
		{"charge bad JSON", contract.PaymentCharge, inTxCall(handle), `{"order_id"`},
		{"refund missing order_id", contract.PaymentRefund, inTxCall(handle), `{}`},
		{"refund unknown field", contract.PaymentRefund, inTxCall(handle), `{"order_id":"o1","amount_cents":5}`},
		{"refund bad JSON", contract.PaymentRefund, inTxCall(handle), `[`},
		{"ledger bad JSON", contract.PaymentLedger, ledgerCall, `nope`},
		{"ledger unknown field", contract.PaymentLedger, ledgerCall, `{"order_id":"o1","x":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tt.call(context.Background(), command(t, tt.typ, tt.payload))
			var inv *worker.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("got result %+v, error %v; want a *worker.InvalidError", res, err)
			}
		})
	}
	checkPayments(t, pool, map[string]paymentRow{})
}

// A batch mixing charges and refunds of orders in every state answers and
// records each as one by one would.
func TestBatchOfChargesAndRefunds(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "charge o1", doCharge(t, pool, "o1", 100, "tok_visa"), okVerdict)
	charge := func(id string, amount int64, token string) worker.Command {
		return command(t, contract.PaymentCharge, contract.ChargeRequest{OrderID: id, CustomerID: "c1", AmountCents: amount, PaymentToken: token})
	}
	refund := func(id string) worker.Command {
		return command(t, contract.PaymentRefund, contract.OrderRef{OrderID: id})
	}

	vs := workertest.RunBatch(t, pool, handle,
		charge("o1", 100, "tok_visa"), // charged before: same answer
		refund("o1"),
		charge("o2", 200, "tok_visa"),
		charge("o3", 300, contract.DeclineToken),
		refund("o4"), // before its charge
		charge("o4", 400, "tok_visa"),
		// A product priced 0: nothing to charge, and so nothing to decline.
		command(t, contract.PaymentCharge, `{"order_id":"o5","amount_cents":0,"payment_token":"tok_decline"}`),
		command(t, contract.PaymentCharge, `{"order_id":"o6","amount_cents":-1,"payment_token":"tok_visa"}`),
	)
	got := workertest.Verdicts(vs)
	want := []verdict{okVerdict, okVerdict, okVerdict, failed(contract.CodeCardDeclined), okVerdict,
		failed(contract.CodeAlreadyRefunded), okVerdict, workertest.Invalid}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if r := payloadOf[contract.RefundReply](t, vs[1].Result); r.RefundedCents != 100 {
		t.Errorf("refund of o1 = %d cents, want 100", r.RefundedCents)
	}
	checkPayments(t, pool, map[string]paymentRow{
		"o1": {Status: "refunded", Charged: 100, Refunds: 100},
		"o2": {Status: "charged", Charged: 200},
		"o3": {Status: "declined", DeclineCode: contract.CodeCardDeclined},
		"o4": {Status: "refunded"},
		"o5": {Status: "charged"},
	})
}
